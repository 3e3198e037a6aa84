"""The two UNI-KD schedules (spec §3.2-3.3): KD weight beta and the GRL coefficient alpha,
with the reference's variants (log10 beta, §8.3; AdaTime's unnormalised progress, §8.7)."""

from __future__ import annotations

import math

import pytest

from shared.clock.schedules import grl_alpha, kd_beta, training_progress

# ---------------------------------------------------------------- beta


@pytest.mark.parametrize("n", [1, 2, 10, 30, 80])
def test_kd_beta_natural_log_runs_to_0_9(n):
    assert kd_beta(1, n) == pytest.approx(0.1 * math.exp(math.log(9) / n), rel=1e-12)
    assert kd_beta(n, n) == pytest.approx(0.9, abs=1e-12)
    assert kd_beta(0, n) == pytest.approx(0.1, abs=1e-15)  # the curve's origin
    values = [kd_beta(e, n) for e in range(1, n + 1)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_kd_beta_table_n10():
    # natural log: beta_e = 0.1 * 9^(e/10); half-way it is 0.1 * 3
    table = {1: 0.1 * 9 ** 0.1, 2: 0.1 * 9 ** 0.2, 5: 0.3, 8: 0.1 * 9 ** 0.8, 10: 0.9}
    for e, v in table.items():
        assert kd_beta(e, 10) == pytest.approx(v, rel=1e-12), e
    assert kd_beta(1, 10) == pytest.approx(0.12457, abs=1e-5)


def test_kd_beta_log10_reference_bug():
    """Spec §8.3: g = log10(9)/N inside exp, so beta climbs 0.1 -> 0.1*e^{log10 9} ~ 0.2597.
    Spec §3.3: 0.110 at epoch 1 and 0.260 at the last epoch for N=10; 0.101 at epoch 1 for N=80."""
    ref = {1: 0.1 * math.exp(math.log10(9) / 10), 5: 0.1 * math.exp(math.log10(9) / 2),
           10: 0.1 * math.exp(math.log10(9))}
    for e, v in ref.items():
        assert kd_beta(e, 10, natural_log=False) == pytest.approx(v, rel=1e-12)
    assert round(kd_beta(1, 10, natural_log=False), 3) == 0.110
    assert round(kd_beta(10, 10, natural_log=False), 3) == 0.260
    assert kd_beta(10, 10, natural_log=False) == pytest.approx(0.25967, abs=1e-5)
    assert round(kd_beta(1, 80, natural_log=False), 3) == 0.101
    assert kd_beta(80, 80, natural_log=False) == pytest.approx(kd_beta(10, 10, natural_log=False))
    # the end value does not depend on N, and stays far below the intended 0.9
    for n in (10, 80):
        assert max(kd_beta(e, n, natural_log=False) for e in range(1, n + 1)) < 0.27


# ---------------------------------------------------------------- alpha


def test_grl_alpha_endpoints_and_shape():
    assert grl_alpha(0.0) == 0.0
    assert grl_alpha(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1, rel=1e-12)
    assert grl_alpha(1.0) == pytest.approx(0.99991, abs=1e-5)
    assert grl_alpha(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1, rel=1e-12)
    ps = [i / 100 for i in range(0, 301)]
    alphas = [grl_alpha(p) for p in ps]
    assert all(a < b for a, b in zip(alphas, alphas[1:]) if b < 1.0)  # strictly up until saturation
    assert all(a <= b for a, b in zip(alphas, alphas[1:]))
    assert all(0.0 <= a <= 1.0 for a in alphas)


# ---------------------------------------------------------------- progress


@pytest.mark.parametrize("n,epochs", [(1, 1), (6, 10), (7, 30), (57, 80)])
def test_training_progress_ramp(n, epochs):
    total = n * epochs
    assert training_progress(0, 1, n, epochs) == 0.0
    assert training_progress(n - 1, epochs, n, epochs) == pytest.approx((total - 1) / total)
    ps = [training_progress(s, e, n, epochs) for e in range(1, epochs + 1) for s in range(n)]
    assert ps == pytest.approx([k / total for k in range(total)])
    assert grl_alpha(ps[0]) == 0.0  # the ramped GRL starts switched off


def test_training_progress_reference_formula():
    """AdaTime's p = (step + epoch*n)/N + 1/n, epoch 1-based (spec §3.2, §8.7)."""
    for n, epochs in ((6, 10), (7, 10), (20, 10), (57, 80)):
        for e in (1, 2, epochs):
            for s in (0, n - 1):
                assert training_progress(s, e, n, epochs, ramp=False) == pytest.approx(
                    (s + e * n) / epochs + 1 / n, rel=1e-12)
    # enough batches per epoch: p > 1 at the very first step of epoch 1
    assert training_progress(0, 1, 20, 10, ramp=False) == pytest.approx(2.05)
    assert training_progress(0, 1, 20, 10, ramp=False) > 1
    assert training_progress(0, 1, 100, 80, ramp=False) > 1
    # HAR-sized epochs (6-7 batches, N=10): p starts below 1, yet alpha is ~1 already
    p = training_progress(0, 1, 6, 10, ramp=False)
    assert p == pytest.approx(0.6 + 1 / 6)
    assert grl_alpha(p) > 0.999
    # with N=80 alpha starts lower and saturates within a few epochs (spec §3.3)
    assert 0.8 < grl_alpha(training_progress(0, 1, 7, 80, ramp=False)) < 0.99
    assert grl_alpha(training_progress(0, 5, 7, 80, ramp=False)) > 0.99
