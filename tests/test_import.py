"""`unikd data import`: .npz, a folder of .npy and CSV windows into the AdaTime layout, with an
error per bad file or row."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.cli.main import main
from shared.data.adatime import check_dir, list_domains, load_domain
from shared.data.importer import import_windows
from shared.errors import UnikdError

C, L, K = 2, 40, 3


def windows(n_per: int = 8, domains=("a", "b"), seed: int = 0):
    """n_per windows per (domain, class): x [N, C, L], y [N], domain ids [N]."""
    rng = np.random.default_rng(seed)
    y = np.tile(np.repeat(np.arange(K), n_per), len(domains))
    d = np.repeat(np.asarray(domains), K * n_per)
    x = (rng.normal(size=(len(y), C, L)) + y[:, None, None]).astype(np.float32)
    return x, y, d


def write_csv(path: Path, x, y, d, split=None, extra=None) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["domain", "label"] + (["split"] if split is not None else [])
        w.writerow(head + [f"c{c}_t{t}" for c in range(x.shape[1]) for t in range(x.shape[2])])
        for i in range(len(y)):
            row = [d[i], y[i]] + ([split[i]] if split is not None else [])
            w.writerow(row + [repr(float(v)) for v in x[i].reshape(-1)])
        for row in extra or []:
            w.writerow(row)
    return path


def read_back(out: Path):
    xs, ys = [], []
    for dom in list_domains(out):
        for split in ("train", "test"):
            part = load_domain(out, split, dom)
            xs.append(part.x)
            ys.append(part.y)
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------- the three formats


def test_npz_with_a_seeded_stratified_split(tmp_path):
    x, y, d = windows()
    np.savez(tmp_path / "w.npz", samples=x, labels=y, domains=d)
    result = import_windows(tmp_path / "w.npz", tmp_path / "out", test_fraction=0.25, seed=3)
    assert result.counts == {"a": {"train": 18, "test": 6}, "b": {"train": 18, "test": 6}}
    assert (result.channels, result.length, result.classes) == (C, L, K)
    assert check_dir(tmp_path / "out") == []
    test_a = load_domain(tmp_path / "out", "test", "a")
    assert torch.bincount(test_a.y).tolist() == [2, 2, 2]  # stratified: 2 of 8 per class
    obj = torch.load(tmp_path / "out" / "train_a.pt", weights_only=True)
    assert obj["samples"].dtype == torch.float32 and obj["labels"].dtype == torch.int64
    xb, yb = read_back(tmp_path / "out")  # every window once, unchanged
    assert len(yb) == len(y)
    assert sorted(map(float, xb.sum((1, 2)))) == pytest.approx(sorted(map(float, x.sum((1, 2)))))
    import_windows(tmp_path / "w.npz", tmp_path / "again", test_fraction=0.25, seed=3)
    assert torch.equal(load_domain(tmp_path / "again", "test", "a").x, test_a.x)  # seeded


def test_npy_folder_with_an_explicit_split(tmp_path):
    x, y, d = windows(domains=("3", "7"))
    split = np.where(np.arange(len(y)) % 4 == 0, "test", "train")
    src = tmp_path / "arrays"
    src.mkdir()
    for name, arr in (("samples", x.transpose(0, 2, 1)), ("labels", y),
                      ("domains", d.astype(int)), ("split", split)):
        np.save(src / f"{name}.npy", arr)
    result = import_windows(src, tmp_path / "out", channels_last=True)
    n_test = int((split[d == "3"] == "test").sum())
    assert result.counts["3"] == {"train": 24 - n_test, "test": n_test}
    assert list_domains(tmp_path / "out") == ["3", "7"]
    first = load_domain(tmp_path / "out", "test", "3")
    assert torch.equal(first.x[0], torch.from_numpy(x[0]))  # [N, L, C] turned into [N, C, L]


def test_csv_through_the_command(tmp_path, capsys):
    x, y, d = windows(n_per=4)
    write_csv(tmp_path / "w.csv", x, y, d)
    rc = main(["data", "import", str(tmp_path / "w.csv"), str(tmp_path / "out"),
               "--channels", str(C), "--test-fraction", "0.25"])
    assert rc == 0, capsys.readouterr().err
    assert "2 channels x 40 samples, 3 classes" in capsys.readouterr().out
    xb, yb = read_back(tmp_path / "out")
    assert xb.shape[1:] == (C, L) and len(yb) == len(y)
    got = load_domain(tmp_path / "out", "train", "a")  # channel-major values, read exactly
    assert any(torch.equal(got.x[0], torch.from_numpy(x[i])) for i in np.flatnonzero(d == "a"))
    assert main(["data", "check", str(tmp_path / "out"), "--dataset", "GENERIC"]) == 0


# ---------------------------------------------------------------- bad rows and files


@pytest.mark.parametrize("row, message", [
    (["a", 1] + ["0.5"] * (C * L - 1), f"{C * L + 1} fields, the header has {C * L + 2}"),
    (["a", 1] + ["nan"] + ["0.5"] * (C * L - 1), "(NaN or Inf)"),
    (["a", 1] + ["abc"] + ["0.5"] * (C * L - 1), "'abc' is not a number"),
    (["a", "1.5"] + ["0.5"] * (C * L), "label '1.5' is not an integer"),
    (["a", "walk"] + ["0.5"] * (C * L), "label 'walk' is not an integer"),
    (["a", "-1"] + ["0.5"] * (C * L), "label -1 is negative"),
    (["z", "1"] + ["0.5"] * (C * L), "unknown domain 'z'"),
    (["a/b", "1"] + ["0.5"] * (C * L), "not a valid id"),
])
def test_a_bad_csv_row_is_named_by_file_and_line(tmp_path, row, message):
    x, y, d = windows(n_per=2)
    src = write_csv(tmp_path / "w.csv", x, y, d, extra=[row])
    bad_line = len(y) + 2  # header is line 1
    with pytest.raises(UnikdError) as err:
        import_windows(src, tmp_path / "out", channels=C, domains={"a", "b"})
    assert f"{src}:{bad_line}: " in str(err.value) and message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_every_bad_row_is_listed(tmp_path, capsys):
    x, y, d = windows(n_per=2)
    bad = [["a", "x"] + ["0.5"] * (C * L), ["b", "1"] + ["inf"] * (C * L)]
    src = write_csv(tmp_path / "w.csv", x, y, d, extra=bad)
    rc = main(["data", "import", str(src), str(tmp_path / "out"), "--channels", str(C)])
    err = capsys.readouterr().err
    assert rc == 2 and "2 problem(s)" in err
    assert f"w.csv:{len(y) + 2}: label 'x'" in err and f"w.csv:{len(y) + 3}: column" in err


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(samples=np.where(np.arange(len(a["labels"]))[:, None, None] == 5,
                                         np.nan, a["samples"])), ":5: window holds NaN"),
    (lambda a: a.update(labels=a["labels"] + 0.5), ":0: label '0.5' is not an integer"),
    (lambda a: a.pop("domains"), "missing arrays domains"),
    (lambda a: a.update(labels=a["labels"][:-1]), "labels must be 1-D with one entry per"),
    (lambda a: a.update(split=np.asarray(["train", "dev"] * (len(a["labels"]) // 2))),
     ":1: split 'dev' must be train or test"),
    (lambda a: a.update(samples=a["samples"][:, 0, 0]), "samples must be [N, C, L] or [N, L]"),
])
def test_bad_numpy_input_is_named(tmp_path, change, message):
    x, y, d = windows(n_per=2)
    arrays = {"samples": x, "labels": y, "domains": d}
    change(arrays)
    np.savez(tmp_path / "w.npz", **arrays)
    with pytest.raises(UnikdError, match="w.npz") as err:
        import_windows(tmp_path / "w.npz", tmp_path / "out")
    assert message in str(err.value)


def test_file_level_errors(tmp_path):
    x, y, d = windows(n_per=1)  # one window per class: nothing can go to test
    np.savez(tmp_path / "w.npz", samples=x, labels=y, domains=d)
    with pytest.raises(UnikdError, match="domain 'a' has no test windows"):
        import_windows(tmp_path / "w.npz", tmp_path / "out")
    np.save(tmp_path / "one.npy", x)
    with pytest.raises(UnikdError, match="folder holding samples.npy"):
        import_windows(tmp_path / "one.npy", tmp_path / "out")
    objs = tmp_path / "objs"
    objs.mkdir()
    np.save(objs / "samples.npy", x)
    np.save(objs / "labels.npy", y)
    np.save(objs / "domains.npy", np.asarray(list(d), dtype=object), allow_pickle=True)
    with pytest.raises(UnikdError, match="holds Python objects"):
        import_windows(objs, tmp_path / "out")
    (tmp_path / "h.csv").write_text("dom,label,v0\na,1,0.5\n")
    with pytest.raises(UnikdError, match=r"h.csv:1: the header has no 'domain' column"):
        import_windows(tmp_path / "h.csv", tmp_path / "out")
    good = windows(n_per=4)
    np.savez(tmp_path / "g.npz", samples=good[0], labels=good[1], domains=good[2])
    import_windows(tmp_path / "g.npz", tmp_path / "out2")
    with pytest.raises(UnikdError, match="already holds"):
        import_windows(tmp_path / "g.npz", tmp_path / "out2")
    import_windows(tmp_path / "g.npz", tmp_path / "out2", force=True)
