"""The synthetic HAR-like generator: determinism, layout, physics invariants and domain shift."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from shared.cli.main import main as cli_main
from shared.data.adatime import check_dir, list_domains, load_domain
from shared.data.synth import (
    CLASSES, DOWNSTAIRS, FS, LIE, SIT, STAND, UPSTAIRS, WALK, SynthConfig, domain_shift,
    generate_domain, write_synthetic,
)
from shared.data.datasets import get_spec
from shared.errors import ConfigError

SMALL = SynthConfig(domains=3, windows_per_class=20, shift=1.0, seed=0)
SPEC = get_spec("SYNTH")


def test_same_config_is_bit_identical() -> None:
    for split in ("train", "test"):
        x1, y1 = generate_domain(1, split, SMALL)
        x2, y2 = generate_domain(1, split, SMALL)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_global_rng_state_is_not_used() -> None:
    x1, _ = generate_domain(0, "train", SMALL)
    np.random.seed(123)
    torch.manual_seed(123)
    np.random.rand(10)
    x2, _ = generate_domain(0, "train", SMALL)
    assert torch.equal(x1, x2)


def test_seed_domain_and_split_change_the_draws() -> None:
    x, _ = generate_domain(0, "train", SMALL)
    x_seed, _ = generate_domain(0, "train", SynthConfig(domains=3, windows_per_class=20, seed=1))
    x_dom, _ = generate_domain(1, "train", SMALL)
    x_test, _ = generate_domain(0, "test", SMALL)
    assert not torch.equal(x, x_seed)
    assert not torch.equal(x[: len(x_dom)], x_dom[: len(x)])
    assert not torch.equal(x[: len(x_test)], x_test)


def test_shapes_dtypes_and_labels() -> None:
    for d in range(SMALL.domains):
        x, y = generate_domain(d, "train", SMALL)
        x_te, y_te = generate_domain(d, "test", SMALL)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (SPEC.channels, SPEC.length) == (9, 128)
        assert x.shape[0] == y.shape[0] and x_te.shape[0] == y_te.shape[0]
        assert int(y.min()) >= 0 and int(y.max()) < SPEC.classes == CLASSES
        assert torch.isfinite(x).all()
        assert 0.35 < len(y_te) / len(y) < 0.65  # test is about half of train


def test_source_is_balanced_with_every_class() -> None:
    _, y = generate_domain(0, "train", SMALL)
    assert torch.bincount(y, minlength=CLASSES).tolist() == [20] * CLASSES
    _, y_te = generate_domain(0, "test", SMALL)
    assert torch.bincount(y_te, minlength=CLASSES).tolist() == [10] * CLASSES


def test_labels_are_shuffled() -> None:
    _, y = generate_domain(0, "train", SMALL)
    assert not torch.equal(y, y.sort().values)


def test_total_acc_is_body_plus_unit_gravity_in_source() -> None:
    # The source has no calibration offset, so total - body is the gravity vector exactly.
    x, _ = generate_domain(0, "train", SMALL)
    gravity = x[:, 6:9] - x[:, 0:3]
    norm = gravity.norm(dim=1)
    assert torch.allclose(norm, torch.ones_like(norm), atol=1e-5)


def test_postures_have_distinct_gravity_and_little_motion() -> None:
    x, y = generate_domain(0, "train", SMALL)
    g = (x[:, 6:9] - x[:, 0:3]).mean(2)  # [N, 3]
    assert g[y == STAND, 0].mean() > 0.95  # upright: gravity on x
    assert g[y == LIE, 2].mean() > 0.9  # supine: gravity on z
    assert g[y == STAND, 2].mean() < g[y == SIT, 2].mean() < g[y == LIE, 2].mean()  # reclining
    motion = x[:, 0:3].std(2).mean(1)
    static = torch.isin(y, torch.tensor([SIT, STAND, LIE]))
    assert motion[~static].min() > 2 * motion[static].max()  # moving vs still: easy, as in HAR


def _step_hz(x: torch.Tensor) -> torch.Tensor:
    """Dominant frequency of the vertical body acceleration, zero-padded for resolution."""
    spec = torch.fft.rfft(x[:, 0], n=1024).abs()
    freqs = torch.fft.rfftfreq(1024, d=1 / FS)
    band = (freqs > 0.8) & (freqs < 4.0)
    return freqs[band][spec[:, band].argmax(1)]


def test_gait_step_frequencies_are_ordered() -> None:
    x, y = generate_domain(0, "train", SynthConfig(windows_per_class=40))
    hz = {c: float(_step_hz(x[y == c]).median()) for c in (WALK, UPSTAIRS, DOWNSTAIRS)}
    assert 1.3 < hz[UPSTAIRS] < hz[WALK] < hz[DOWNSTAIRS] < 2.6


def test_class_priors_shift_in_targets_only() -> None:
    _, y_src = generate_domain(0, "train", SMALL)
    counts_src = torch.bincount(y_src, minlength=CLASSES)
    for d in (1, 2):
        _, y = generate_domain(d, "train", SMALL)
        counts = torch.bincount(y, minlength=CLASSES)
        assert (counts > 0).all()  # every class stays present
        assert not torch.equal(counts, counts_src)
    no_shift = SynthConfig(domains=3, windows_per_class=20, shift=0.0)
    _, y = generate_domain(2, "train", no_shift)
    assert torch.equal(torch.bincount(y, minlength=CLASSES), counts_src)


def test_source_is_unshifted_and_zero_shift_is_identity() -> None:
    for d, cfg in ((0, SMALL), (2, SynthConfig(shift=0.0))):
        s = domain_shift(d, cfg)
        assert np.array_equal(s.rotation, np.eye(3))
        assert s.tempo == 1.0 and s.noise_scale == 1.0
        assert np.allclose(s.priors, 1 / CLASSES)
    s = domain_shift(1, SMALL)
    assert np.allclose(s.rotation @ s.rotation.T, np.eye(3))  # a proper rotation
    assert abs(np.linalg.det(s.rotation) - 1) < 1e-9
    assert s.tempo != 1.0 and s.noise_scale > 1.0


def _channel_means(domain: int, cfg: SynthConfig) -> torch.Tensor:
    x, _ = generate_domain(domain, "train", cfg)
    return x.mean(dim=(0, 2))


def test_zero_shift_makes_domains_alike_and_shift_makes_them_differ() -> None:
    cfg0 = SynthConfig(domains=4, windows_per_class=60, shift=0.0)
    cfg1 = SynthConfig(domains=4, windows_per_class=60, shift=1.0)
    src = _channel_means(0, cfg0)
    assert torch.equal(src, _channel_means(0, cfg1))  # the source ignores `shift`
    for d in (1, 2, 3):
        alike = (_channel_means(d, cfg0) - src).abs().max()
        shifted = (_channel_means(d, cfg1) - src).abs().max()
        assert alike < 0.03
        assert shifted > 2 * alike and shifted > 0.05


def test_write_synthetic_is_loadable(tmp_path) -> None:
    paths = write_synthetic(tmp_path / "synth", SMALL)
    assert len(paths) == 2 * SMALL.domains and all(p.is_file() for p in paths)
    assert list_domains(tmp_path / "synth") == ["0", "1", "2"]
    assert check_dir(tmp_path / "synth", SPEC) == []
    dom = load_domain(tmp_path / "synth", "test", "1", SPEC)
    x, y = generate_domain(1, "test", SMALL)
    assert torch.equal(dom.x, x) and torch.equal(dom.y, y)


def test_cli_data_synth(tmp_path, capsys) -> None:
    assert cli_main(["data", "synth", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{s}_{d}.pt" for s in ("train", "test") for d in range(4))
    assert check_dir(tmp_path, SPEC) == []
    assert "wrote 8 files" in capsys.readouterr().out


def test_bad_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        generate_domain(0, "valid", SMALL)


@pytest.mark.parametrize("bad", [{"domains": 0}, {"windows_per_class": 0}, {"shift": -0.5},
                                 {"shift": float("nan")}, {"seed": -1}])
def test_bad_config_is_a_config_error(bad: dict, tmp_path) -> None:
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        generate_domain(0, "train", SynthConfig(**bad))
    with pytest.raises(ConfigError, match=key):
        write_synthetic(tmp_path, SynthConfig(**bad))


def test_cli_reports_bad_config(tmp_path, capsys) -> None:
    assert cli_main(["data", "synth", str(tmp_path), "--seed", "-1"]) == 2
    assert "seed" in capsys.readouterr().err


def test_default_generation_is_fast() -> None:
    cfg = SynthConfig()
    start = time.perf_counter()
    for d in range(cfg.domains):
        for split in ("train", "test"):
            generate_domain(d, split, cfg)
    assert time.perf_counter() - start < 2.0  # target < 1 s; slack for loaded CI machines
