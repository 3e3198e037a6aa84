"""`unikd data import`: windows from NumPy or CSV files into the AdaTime layout.

Accepted inputs (every window carries a label and a domain id; a split is optional):

* ``.npz`` file with arrays ``samples`` [N, C, L] (or [N, L] for one channel; [N, L, C] with
  ``channels_last``), ``labels`` [N] integers, ``domains`` [N] (integers or strings) and
  optionally ``split`` [N] ("train"/"test", or 0 = train / 1 = test);
* a folder of ``.npy`` files with the same names: ``samples.npy``, ``labels.npy``,
  ``domains.npy`` and optionally ``split.npy`` (loaded without pickle);
* ``.csv`` file, one window per row, with a header row. The columns ``domain`` and ``label``
  (and optionally ``split``) are named in the header; every other column is a value of the
  window, channel-major: the L samples of channel 0, then of channel 1, ... (``channels``
  says how many channels a row holds).

Train/test: a ``split`` column/array is used as given. Without one, each (domain, class) is
split by a seeded stratified fraction: round(n * test_fraction) windows (halves up) go to test,
at least one stays in train, chosen by a generator seeded with (seed, crc32(domain), class);
the windows keep their input order within each file. Every domain needs windows in both
splits.

Output: ``train_<domain>.pt`` / ``test_<domain>.pt`` holding ``samples`` [N, C, L] float32 and
``labels`` int64, written atomically, then read back and validated with
`shared.data.adatime.check_dir` against the folder's own shape (GENERIC). Nothing is written
when any input row is bad: the error lists every problem (up to 20) as file:row (CSV line
number, or window index for NumPy input) and what is wrong.
"""

from __future__ import annotations

import csv
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.data.adatime import check_dir, dataset_spec
from shared.errors import DataError, UnikdError

FORMATS = ("auto", "npz", "npy", "csv")
SPLITS = ("train", "test")
MAX_REPORTED = 20
DOMAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
NPY_FILES = ("samples", "labels", "domains", "split")
NPY_FOLDER = ("NumPy .npy input is a folder holding samples.npy, labels.npy, domains.npy "
              "(and optionally split.npy): give the folder")


class ImportProblems(UnikdError):
    """Every bad row of an input (up to MAX_REPORTED), so one fix-up pass is enough."""

    def __init__(self, source: Path, problems: list[DataError], total: int):
        self.source, self.problems, self.total = source, problems, total
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"{total} problem(s) in {source}; nothing was written:\n  "
                         + "\n  ".join(str(p) for p in problems) + more)


class _Problems:
    def __init__(self, source: Path):
        self.source, self.items, self.total = source, [], 0

    def add(self, where: str, problem: str) -> None:
        self.total += 1
        if len(self.items) < MAX_REPORTED:
            self.items.append(DataError(where, problem))

    def raise_any(self) -> None:
        if self.total:
            raise ImportProblems(self.source, self.items, self.total)


@dataclass
class Windows:
    """Everything read from one input, validated: x [N, C, L] float32, y [N] int64."""

    x: np.ndarray
    y: np.ndarray
    domains: list[str]
    split: list[str] | None  # "train"/"test" per window, or None: split by fraction


@dataclass
class ImportResult:
    files: list[Path]
    counts: dict[str, dict[str, int]]  # domain -> split -> windows
    channels: int
    length: int
    classes: int


# ---------------------------------------------------------------- per-value checks


def _domain_id(value: object, where: str, allowed: set[str] | None, problems: _Problems
               ) -> str:
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or value != int(value):
            problems.add(where, f"domain {value!r} is not an id (integer or name)")
            return ""
        value = int(value)
    text = str(value).strip()
    if not DOMAIN_ID.fullmatch(text):
        problems.add(where, f"domain {text!r} is not a valid id (letters, digits, '_' or '-', "
                            f"used in the file name train_<domain>.pt)")
        return ""
    if allowed is not None and text not in allowed:
        problems.add(where, f"unknown domain {text!r} (--domains allows "
                            f"{', '.join(sorted(allowed))})")
        return ""
    return text


def _label(value: object, where: str, problems: _Problems) -> int:
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        problems.add(where, f"label {text!r} is not an integer")
        return -1
    if not math.isfinite(number) or number != int(number):
        problems.add(where, f"label {text!r} is not an integer")
        return -1
    if number < 0:
        problems.add(where, f"label {int(number)} is negative; labels are 0..K-1")
        return -1
    return int(number)


def _split(value: object, where: str, problems: _Problems) -> str:
    text = str(value).strip().lower()
    text = {"0": "train", "1": "test"}.get(text, text)
    if text not in SPLITS:
        problems.add(where, f"split {str(value)!r} must be train or test (or 0 / 1)")
        return ""
    return text


# ---------------------------------------------------------------- readers


def read_csv(path: Path, channels: int = 1, allowed: set[str] | None = None,
             columns: tuple[str, str, str] = ("domain", "label", "split")) -> Windows:
    """One window per row; see the module docstring for the layout."""
    problems = _Problems(path)
    domain_col, label_col, split_col = columns
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(path, "empty file: expected a header row")
        header = [h.strip() for h in header]
        for need in (domain_col, label_col):
            if need not in header:
                raise DataError(f"{path}:1", f"the header has no '{need}' column "
                                             f"(found: {', '.join(header[:8])}...)")
        at = {name: i for i, name in enumerate(header)}
        value_cols = [i for i, h in enumerate(header) if h not in (domain_col, label_col,
                                                                    split_col)]
        n_values = len(value_cols)
        if n_values == 0 or n_values % channels:
            raise DataError(f"{path}:1", f"{n_values} value columns cannot hold {channels} "
                                         f"channel(s) of equal length")
        length = n_values // channels
        rows, ys, doms, splits = [], [], [], []
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            if not row or all(not c.strip() for c in row):
                continue  # blank line
            if len(row) != len(header):
                problems.add(where, f"{len(row)} fields, the header has {len(header)} "
                                    f"({n_values} values + domain/label"
                                    f"{'/split' if split_col in at else ''})")
                continue
            values = np.empty(n_values, dtype=np.float64)
            bad = None
            for k, i in enumerate(value_cols):
                try:
                    values[k] = float(row[i])
                except ValueError:
                    bad = f"column '{header[i]}': {row[i].strip()!r} is not a number"
                    break
                if not math.isfinite(values[k]):
                    bad = f"column '{header[i]}': {row[i].strip()} (NaN or Inf)"
                    break
            if bad:
                problems.add(where, bad)
                continue
            y = _label(row[at[label_col]], where, problems)
            d = _domain_id(row[at[domain_col]], where, allowed, problems)
            s = _split(row[at[split_col]], where, problems) if split_col in at else "train"
            if y < 0 or not d or not s:
                continue
            rows.append(values.reshape(channels, length))
            ys.append(y)
            doms.append(d)
            splits.append(s)
    problems.raise_any()
    if not rows:
        raise DataError(path, "no windows: the file has a header but no data rows")
    return Windows(np.stack(rows).astype(np.float32), np.asarray(ys, dtype=np.int64), doms,
                   splits if split_col in at else None)


def _npy(path: Path, name: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(path, f"'{name}' holds Python objects; save it as a numeric or "
                                  f"fixed-width string array (np.asarray(..., dtype=str))"
                            ) from None
        raise DataError(path, f"cannot be read as a NumPy array ({exc})") from None
    except OSError as exc:
        raise DataError(path, f"cannot be read as a NumPy array ({exc})") from None


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The named arrays of a .npz file or of a folder of .npy files."""
    if path.is_dir():
        found = {n: path / f"{n}.npy" for n in NPY_FILES if (path / f"{n}.npy").is_file()}
        return {n: _npy(p, n) for n, p in found.items()}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {n: z[n] for n in z.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(path, "an array holds Python objects; save strings as a "
                                  "fixed-width string array (np.asarray(..., dtype=str))"
                            ) from None
        raise DataError(path, f"cannot be read as .npz ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(path, f"cannot be read as .npz ({exc})") from None


def read_numpy(path: Path, allowed: set[str] | None = None, channels_last: bool = False
               ) -> Windows:
    """Windows from a .npz file or a folder of .npy files (module docstring)."""
    arrays = read_arrays(path)
    missing = [n for n in ("samples", "labels", "domains") if n not in arrays]
    if missing:
        kind = "files" if path.is_dir() else "arrays"
        raise DataError(path, f"missing {kind} {', '.join(missing)} (found: "
                              f"{', '.join(arrays) or 'none'}); expected samples, labels, "
                              f"domains and optionally split")
    x = arrays["samples"]
    if x.ndim == 2:
        x = x[:, None, :]
    elif x.ndim == 3 and channels_last:
        x = x.transpose(0, 2, 1)
    elif x.ndim != 3:
        raise DataError(path, f"samples must be [N, C, L] or [N, L], found shape {list(x.shape)}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(path, f"samples must be numbers, found dtype {x.dtype}")
    n = len(x)
    for name in ("labels", "domains", "split"):
        if name in arrays and (arrays[name].ndim != 1 or len(arrays[name]) != n):
            raise DataError(path, f"{name} must be 1-D with one entry per window ({n}), found "
                                  f"shape {list(arrays[name].shape)}")
    if n == 0:
        raise DataError(path, "no windows: samples is empty")
    problems = _Problems(path)
    x = x.astype(np.float32)
    finite = np.isfinite(x).reshape(n, -1).all(1)
    ys, doms, splits = [], [], []
    for i in range(n):
        where = f"{path}:{i}"
        if not finite[i]:
            problems.add(where, "window holds NaN or Inf")
        ys.append(_label(arrays["labels"][i], where, problems))
        doms.append(_domain_id(arrays["domains"][i].item(), where, allowed, problems))
        if "split" in arrays:
            splits.append(_split(arrays["split"][i].item(), where, problems))
    problems.raise_any()
    return Windows(np.ascontiguousarray(x), np.asarray(ys, dtype=np.int64), doms,
                   splits if "split" in arrays else None)


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "npy"
    suffix = path.suffix.lower()
    if suffix in (".npz", ".csv"):
        return suffix[1:]
    if suffix == ".npy":
        raise DataError(path, NPY_FOLDER)
    raise DataError(path, "cannot tell the format: give a .npz or .csv file, a folder of .npy "
                          "files, or --format")


def read_input(path: Path, fmt: str = "auto", channels: int = 1,
               allowed: set[str] | None = None, channels_last: bool = False) -> Windows:
    if fmt not in FORMATS:
        raise UnikdError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}")
    if not path.exists():
        raise DataError(path, "not found")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "npy" and not path.is_dir():
        raise DataError(path, NPY_FOLDER)
    if fmt == "csv":
        return read_csv(path, channels, allowed)
    return read_numpy(path, allowed, channels_last)


# ---------------------------------------------------------------- split and write


def assign_splits(w: Windows, test_fraction: float, seed: int) -> list[str]:
    """The given split, or a seeded stratified one per (domain, class)."""
    if w.split is not None:
        return w.split
    split = ["train"] * len(w.y)
    doms = np.asarray(w.domains)
    for d in dict.fromkeys(w.domains):
        for c in np.unique(w.y[doms == d]):
            idx = np.flatnonzero((doms == d) & (w.y == c))
            n_test = min(math.floor(len(idx) * test_fraction + 0.5), len(idx) - 1)
            rng = np.random.default_rng([seed, zlib.crc32(d.encode()), int(c)])
            for i in rng.permutation(idx)[:max(n_test, 0)]:
                split[i] = "test"
    return split


def _save(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"samples": torch.from_numpy(x), "labels": torch.from_numpy(y)}, tmp)
    os.replace(tmp, path)


def import_windows(src: str | Path, out: str | Path, fmt: str = "auto", channels: int = 1,
                   test_fraction: float = 0.25, seed: int = 0, domains: set[str] | None = None,
                   channels_last: bool = False, force: bool = False) -> ImportResult:
    """Read, check, split and write; the written folder is validated before returning."""
    src, out = Path(src), Path(out)
    if channels < 1:
        raise UnikdError(f"--channels must be >= 1, got {channels}")
    if not 0.0 <= test_fraction < 1.0:
        raise UnikdError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    existing = sorted(out.glob("train_*.pt")) + sorted(out.glob("test_*.pt"))
    if existing and not force:
        raise DataError(out, f"already holds {len(existing)} AdaTime file(s) (e.g. "
                             f"{existing[0].name}); choose another folder or pass --force")
    w = read_input(src, fmt, channels, domains, channels_last)
    split = np.asarray(assign_splits(w, test_fraction, seed))
    doms = np.asarray(w.domains)
    counts: dict[str, dict[str, int]] = {}
    for d in dict.fromkeys(w.domains):
        counts[d] = {s: int(((doms == d) & (split == s)).sum()) for s in SPLITS}
        empty = [s for s in SPLITS if counts[d][s] == 0]
        if empty:
            raise DataError(src, f"domain {d!r} has no {empty[0]} windows "
                                 f"({counts[d]['train']} train, {counts[d]['test']} test); "
                                 f"every domain needs both: add windows, change "
                                 f"--test-fraction or the split column")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for d in counts:
        for s in SPLITS:
            idx = np.flatnonzero((doms == d) & (split == s))
            files.append(out / f"{s}_{d}.pt")
            _save(files[-1], w.x[idx], w.y[idx])
    spec = dataset_spec("GENERIC", out)
    problems = check_dir(out, spec)
    if problems:
        raise problems[0]
    return ImportResult(files, counts, spec.channels, spec.length, spec.classes)
