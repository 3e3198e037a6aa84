"""AdaTime loader: every bad file is a DataError naming the file and the problem; layouts; batching."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from shared.cli.main import main
from shared.data.adatime import check_dir, load_domain
from shared.data.loaders import Normalizer, epoch_batches, eval_chunks
from shared.data.datasets import get_spec
from shared.errors import DataError

HAR = get_spec("HAR")


class NotAWeight:
    """An arbitrary class: unpickling it would run code, so a weights-only load must refuse it."""

    def __init__(self) -> None:
        self.payload = "anything"


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------ error paths

def har_like(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A valid HAR-shaped domain: [n, 9, 128] samples, labels cycling through the 6 classes."""
    return torch.randn(n, 9, 128, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 6


# Each case: how to write train_0.pt with the factory, and words the message must contain.
ERROR_CASES = {
    "truncated": (lambda make: _truncate(make()), "cannot be read"),
    "corrupt": (lambda make: make().write_bytes(b"\x00garbage, not a torch file" * 8), "cannot be read"),
    "pickled-object": (lambda make: make(obj={"samples": NotAWeight(), "labels": torch.zeros(2)}),
                       "weights-only"),
    "non-dict": (lambda make: make(obj=torch.zeros(4, 9, 128)), "expected a dict"),
    "wrong-keys": (lambda make: make(obj={"x": torch.zeros(4, 9, 128), "y": torch.zeros(4)}),
                   "missing key"),
    "nan": (lambda make: make(samples=har_like()[0].index_fill_(0, torch.tensor([3]), float("nan"))),
            "NaN or Inf"),
    "inf": (lambda make: make(samples=har_like()[0].index_fill_(0, torch.tensor([0]), float("inf"))),
            "NaN or Inf"),
    "label-too-big": (lambda make: make(labels=torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])),
                      "labels out of range"),
    "label-negative": (lambda make: make(labels=torch.tensor([0, 1, 2, 3, 4, 5, -1, 0])),
                       "labels out of range"),
    "non-integer-labels": (lambda make: make(labels=torch.tensor([0.5] * 8)), "non-integer"),
    "channels": (lambda make: make(samples=torch.randn(8, 3, 128)), "3 channels"),
    "length": (lambda make: make(samples=torch.randn(8, 9, 100)), "window length 100"),
    "empty": (lambda make: make(samples=torch.zeros(0, 9, 128), labels=torch.zeros(0, dtype=torch.long)),
              "empty domain"),
    "count-mismatch": (lambda make: make(labels=torch.zeros(5, dtype=torch.long)),
                       "8 samples but 5 labels"),
    "integer-samples": (lambda make: make(samples=torch.zeros(8, 9, 128, dtype=torch.long)),
                        "floating point"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_file_raises_data_error_naming_file_and_problem(case, make_domain_file, tmp_path):
    # Prepare
    write, expected = ERROR_CASES[case]
    write(make_domain_file)
    file = tmp_path / "data" / "train_0.pt"
    # Execute
    with pytest.raises(DataError) as info:
        load_domain(tmp_path / "data", "train", "0", HAR)
    # Assert
    assert info.value.file == file
    assert str(file) in str(info.value)
    assert expected in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="file not found") as info:
        load_domain(tmp_path, "test", "7", HAR)
    assert str(tmp_path / "test_7.pt") in str(info.value)


def test_negative_label_refused_without_spec(make_domain_file, tmp_path):
    make_domain_file(labels=torch.tensor([0, 1, -2, 0, 0, 0, 0, 0]))
    with pytest.raises(DataError, match="negative label -2"):
        load_domain(tmp_path / "data", "train", "0")


# ------------------------------------------------------------------ layouts


def test_n_l_c_is_transposed_to_n_c_l(make_domain_file, tmp_path):
    x, y = har_like()
    make_domain_file(samples=x.transpose(1, 2).contiguous(), labels=y)  # N×128×9
    d = load_domain(tmp_path / "data", "train", "0", HAR)
    assert d.x.shape == (8, 9, 128)
    assert torch.equal(d.x, x)


def test_n_l_gets_a_channel_axis(make_domain_file, tmp_path):
    x = torch.randn(6, 128)
    make_domain_file(samples=x, labels=torch.arange(6))
    d = load_domain(tmp_path / "data", "train", "0")
    assert d.x.shape == (6, 1, 128)
    assert torch.equal(d.x[:, 0], x)


def test_integral_float_labels_are_accepted_as_int64(make_domain_file, tmp_path):
    make_domain_file(labels=torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 1.0]))
    d = load_domain(tmp_path / "data", "train", "0", HAR)
    assert d.y.dtype == torch.int64
    assert d.y.tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert d.x.dtype == torch.float32


def test_check_dir_lists_every_problem(make_domain_file, tmp_path):
    # Prepare: domain 0 valid; domain 1 has NaN (train) and wrong channels (test); domain 2 lacks test
    folder = tmp_path / "data"
    for split in ("train", "test"):
        make_domain_file(split=split, domain="0")
    nan_x = har_like()[0]
    nan_x[2, 4, 7] = float("nan")
    make_domain_file(nan_x, split="train", domain="1")
    make_domain_file(torch.randn(8, 4, 128), split="test", domain="1")
    make_domain_file(split="train", domain="2")
    # Execute
    problems = check_dir(folder, HAR)
    # Assert
    named = {p.file.name: p.problem for p in problems}
    assert set(named) == {"train_1.pt", "test_1.pt", "test_2.pt"}
    assert "NaN" in named["train_1.pt"]
    assert "4 channels" in named["test_1.pt"]
    assert "not found" in named["test_2.pt"]


# ------------------------------------------------------------------ `unikd data check` on real data


@pytest.mark.slow
def test_data_check_cli_names_all_broken_files_of_a_real_copy(har_dir, tmp_path, capsys):
    # Prepare: a full copy of UCI-HAR with three files broken in three different ways
    copy = tmp_path / "HAR"
    shutil.copytree(har_dir, copy)
    _truncate(copy / "train_2.pt")
    nan_file = copy / "test_11.pt"
    obj = torch.load(nan_file, weights_only=True)
    obj["samples"][5, 0, 10] = float("nan")
    torch.save(obj, nan_file)
    ch_file = copy / "train_7.pt"
    obj = torch.load(ch_file, weights_only=True)
    obj["samples"] = obj["samples"][:, :3, :].clone()
    torch.save(obj, ch_file)
    # Execute
    rc = main(["data", "check", str(copy), "--dataset", "HAR"])
    err = capsys.readouterr().err
    # Assert
    assert rc != 0
    for broken in ("train_2.pt", "test_11.pt", "train_7.pt"):
        assert str(copy / broken) in err, f"{broken} not named in:\n{err}"
    assert "3 problem(s)" in err


@pytest.mark.slow
def test_data_check_cli_accepts_the_pristine_real_folder(har_dir, capsys):
    rc = main(["data", "check", str(har_dir), "--dataset", "HAR"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "30 domains, 60 files valid for HAR" in out


# ------------------------------------------------------------------ normalisation and batching


def test_normalizer_fit_gives_zero_mean_unit_std_per_channel():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, 64, generator=g) * torch.tensor([1.0, 5.0, 0.1, 30.0])[None, :, None] \
        + torch.tensor([0.0, -3.0, 10.0, 100.0])[None, :, None]
    z = Normalizer.fit(x)(x)
    assert torch.allclose(z.mean(dim=(0, 2)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2)), torch.ones(4), atol=1e-4)


def test_normalizer_constant_channel_stays_finite():
    x = torch.ones(10, 2, 16)
    assert torch.isfinite(Normalizer.fit(x)(x)).all()


def test_identity_normalizer_leaves_data_unchanged():
    x = torch.randn(7, 3, 20)
    assert torch.equal(Normalizer.identity(3)(x), x)


def test_epoch_batches_equal_sizes_and_distinct_indices_with_drop_last():
    n, bs = 103, 10
    batches = epoch_batches(n, bs, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [bs] * (n // bs)
    idx = torch.cat(batches)
    assert len(set(idx.tolist())) == n // bs * bs
    assert 0 <= int(idx.min()) and int(idx.max()) < n


def test_epoch_batches_same_seed_same_batches_other_seed_differs():
    a = epoch_batches(64, 8, torch.Generator().manual_seed(3))
    b = epoch_batches(64, 8, torch.Generator().manual_seed(3))
    c = epoch_batches(64, 8, torch.Generator().manual_seed(4))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_epoch_batches_small_domain_and_no_drop_last():
    assert [len(b) for b in epoch_batches(5, 32, torch.Generator().manual_seed(0))] == [5]
    full = epoch_batches(103, 10, torch.Generator().manual_seed(0), drop_last=False)
    assert sorted(torch.cat(full).tolist()) == list(range(103))


def test_eval_chunks_cover_every_sample_in_order():
    n = 1030
    chunks = list(eval_chunks(n, 512))
    covered = [i for s in chunks for i in range(s.start, s.stop)]
    assert covered == list(range(n))
    assert [s.stop - s.start for s in chunks] == [512, 512, 6]
