"""Read and validate AdaTime-layout files: `<dir>/{train,test}_<domain>.pt`.

Each file holds a dict {"samples": N×C×L | N×L×C | N×L, "labels": N}. Loading uses
`torch.load(weights_only=True)`, so no arbitrary object is ever unpickled. Every problem is a
`DataError` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.data.datasets import DatasetSpec, generic_spec, get_spec
from shared.errors import DataError, UnikdError

SPLITS = ("train", "test")


@dataclass
class Domain:
    """One split of one domain, validated: x [N, C, L] float32, y [N] int64."""

    x: torch.Tensor
    y: torch.Tensor
    file: Path

    def __len__(self) -> int:
        return len(self.y)


def domain_file(data_dir: str | Path, split: str, domain: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    return Path(data_dir) / f"{split}_{domain}.pt"


def list_domains(data_dir: str | Path) -> list[str]:
    """Domain ids with a train file, numeric ids in numeric order."""
    ids = [m.group(1) for p in Path(data_dir).glob("train_*.pt")
           if (m := re.fullmatch(r"train_(.+)\.pt", p.name))]
    return sorted(ids, key=lambda d: (not d.isdigit(), int(d) if d.isdigit() else 0, d))


def _as_tensor(value: object, file: Path, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise DataError(file, f"'{key}' must be a tensor or array, found {type(value).__name__}")


def _read(file: Path) -> dict:
    if not file.is_file():
        raise DataError(file, "file not found")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt/unsafe files
        raise DataError(file, f"cannot be read as a weights-only torch file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise DataError(file, f"expected a dict with 'samples' and 'labels', found {type(obj).__name__}")
    missing = [k for k in ("samples", "labels") if k not in obj]
    if missing:
        raise DataError(file, f"missing key(s) {missing}; found {sorted(map(str, obj))}")
    return obj


def to_channels_first(samples: torch.Tensor, file: Path) -> torch.Tensor:
    """N×L -> N×1×L; N×L×C -> N×C×L (the smaller of dims 1 and 2 is the channel axis)."""
    if samples.dim() == 2:
        return samples.unsqueeze(1)
    if samples.dim() != 3:
        raise DataError(file, f"'samples' must be N×C×L, N×L×C or N×L, found shape {list(samples.shape)}")
    if samples.shape[2] < samples.shape[1]:
        return samples.transpose(1, 2).contiguous()
    return samples


def load_domain(
    data_dir: str | Path, split: str, domain: str, spec: DatasetSpec | None = None,
) -> Domain:
    """Load and validate one file; with `spec`, channels, length and label range are checked too."""
    file = domain_file(data_dir, split, domain)
    obj = _read(file)
    x = to_channels_first(_as_tensor(obj["samples"], file, "samples"), file)
    y = _as_tensor(obj["labels"], file, "labels")
    if not x.is_floating_point():
        raise DataError(file, f"'samples' must be floating point, found {x.dtype}")
    x = x.float()
    if y.dim() != 1:
        y = y.reshape(-1) if y.dim() == 2 and 1 in y.shape else y
    if y.dim() != 1:
        raise DataError(file, f"'labels' must be 1-D, found shape {list(y.shape)}")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise DataError(file, "'labels' hold non-integer values")
    y = y.long()
    if len(x) == 0:
        raise DataError(file, "empty domain: 0 samples")
    if len(x) != len(y):
        raise DataError(file, f"{len(x)} samples but {len(y)} labels")
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.flatten(1).any(1).nonzero().flatten()
        raise DataError(file, f"NaN or Inf in {len(rows)} window(s), first at index {int(rows[0])}")
    if spec is not None:
        if x.shape[1] != spec.channels:
            raise DataError(file, f"{x.shape[1]} channels, dataset {spec.name} has {spec.channels}")
        if x.shape[2] != spec.length:
            raise DataError(file, f"window length {x.shape[2]}, dataset {spec.name} has {spec.length}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= spec.classes:
            raise DataError(file, f"labels out of range [0, {spec.classes - 1}]: found {lo}..{hi}")
    elif int(y.min()) < 0:
        raise DataError(file, f"negative label {int(y.min())}")
    return Domain(x, y, file)


def check_dir(data_dir: str | Path, spec: DatasetSpec | None = None) -> list[DataError]:
    """Validate every file of a folder; returns all problems instead of stopping at the first."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [DataError(data_dir, "not a directory")]
    domains = list_domains(data_dir)
    if not domains:
        return [DataError(data_dir, "no train_<domain>.pt files")]
    problems: list[DataError] = []
    for d in domains:
        for split in SPLITS:
            try:
                load_domain(data_dir, split, d, spec)
            except DataError as err:
                problems.append(err)
    return problems


def spec_from_files(data_dir: str | Path, domain: str | None = None) -> DatasetSpec:
    """A generic spec whose channels, length and classes are read from the files."""
    data_dir = Path(data_dir)
    domains = [domain] if domain else list_domains(data_dir)
    if not domains:
        raise DataError(data_dir, "no train_<domain>.pt files")
    first = load_domain(data_dir, "train", domains[0])
    classes = max(int(load_domain(data_dir, "train", d).y.max()) for d in domains) + 1
    return generic_spec(first.x.shape[1], first.x.shape[2], classes)


def dataset_spec(name: str, data_dir: str | Path | None = None) -> DatasetSpec:
    """A registry dataset by name, or GENERIC: the shape read from the files of `data_dir`."""
    if name.upper() == "GENERIC":
        if not data_dir:
            raise UnikdError("dataset GENERIC reads its shape from the files: give the data "
                             "folder (--data DIR, or data.path)")
        return spec_from_files(data_dir)
    return get_spec(name)
