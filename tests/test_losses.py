"""UNI-KD loss terms (shared.unikd.losses) on hand-computed cases, and the gradient routing of
shared.unikd.engine that the reference-code switches (spec §8.2, §8.6) are about.

Expected numbers come from the formulas written out with `math`, never from the function
under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from shared.unikd import losses
from shared.data.datasets import get_spec
from shared.unikd.engine import (KDHparams, StepSchedule, TeacherOut, UniKDNets,
                           source_terms, target_terms)


def named_grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Current .grad of every parameter (zeros where a term did not reach it)."""
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in module.named_parameters()}


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _lse(zs) -> float:
    m = max(zs)
    return m + math.log(sum(math.exp(z - m) for z in zs))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _kl(zt, zs, temp) -> float:
    """sum_c p_t (log p_t - log p_s) at temperature temp, written out."""
    at, as_ = [z / temp for z in zt], [z / temp for z in zs]
    lt, ls = _lse(at), _lse(as_)
    return sum(math.exp(a - lt) * ((a - lt) - (b - ls)) for a, b in zip(at, as_))


# ---------------------------------------------------------------- single terms


def test_source_ce_hand_computed():
    z = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    y = [0, 2]
    expected = sum(-row[c] + _lse(row) for row, c in zip(z, y)) / 2
    got = losses.source_ce(_t(z), torch.tensor(y))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # uniform logits: log C
    assert losses.source_ce(torch.zeros(4, 6), torch.arange(4)).item() == pytest.approx(
        math.log(6), rel=1e-6)


def test_hint_l1_is_mean_absolute_difference():
    a = _t([[1.0, 2.0], [3.0, 4.0]])
    assert losses.hint_l1(a, torch.zeros(2, 2)).item() == pytest.approx(2.5)
    assert losses.hint_l1(a, torch.ones(2, 2)).item() == pytest.approx((0 + 1 + 2 + 3) / 4)
    assert losses.hint_l1(a, _t([[2.0, 0.0], [3.0, 8.0]])).item() == pytest.approx(
        (1 + 2 + 0 + 4) / 4)
    assert losses.hint_l1(a, a.clone()).item() == 0.0


def test_bce_to_constant_targets():
    x = [0.0, 2.0, -1.5]
    # BCE(sigmoid(x), 1) = log(1 + e^-x);  BCE(sigmoid(x), 0) = log(1 + e^x)
    real = sum(_softplus(-v) for v in x) / 3
    fake = sum(_softplus(v) for v in x) / 3
    assert losses.bce_to(_t(x), 1.0).item() == pytest.approx(real, rel=1e-6)
    assert losses.bce_to(_t(x), 0.0).item() == pytest.approx(fake, rel=1e-6)
    assert losses.bce_to(torch.zeros(5), 1.0).item() == pytest.approx(math.log(2), rel=1e-6)
    assert losses.bce_to(torch.zeros(5), 0.0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_feature_disc_loss_real_one_fake_zero():
    real, fake = [0.0, 2.0], [1.0, -3.0, 0.5]
    expected = (sum(_softplus(-v) for v in real) / 2 + sum(_softplus(v) for v in fake) / 3)
    assert losses.feature_disc_loss(_t(real), _t(fake)).item() == pytest.approx(expected, rel=1e-6)
    # a perfect discriminator has a loss near 0, a fooled one a large loss
    assert losses.feature_disc_loss(_t([50.0]), _t([-50.0])).item() < 1e-6
    assert losses.feature_disc_loss(_t([-10.0]), _t([10.0])).item() == pytest.approx(
        2 * _softplus(10.0), rel=1e-6)


def test_generator_loss_targets_real():
    x = [3.0, -1.0]
    expected = (_softplus(-3.0) + _softplus(1.0)) / 2
    assert losses.generator_loss(_t(x)).item() == pytest.approx(expected, rel=1e-6)


def test_domain_ce_labels():
    d = [[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]
    for label in (0, 1):
        expected = sum(-row[label] + _lse(row) for row in d) / 3
        got = losses.domain_ce(_t(d), label)
        assert got.item() == pytest.approx(expected, rel=1e-6)


def test_confusion_weights_values_and_range():
    # equal logits: D_d cannot tell -> w = 1
    assert torch.equal(losses.confusion_weights(torch.zeros(3, 2)), torch.ones(3))
    # very confident either way -> w ~ 0
    w = losses.confusion_weights(_t([[30.0, 0.0], [0.0, 30.0]]))
    assert (w >= 0).all() and (w < 1e-6).all()
    # hand value: p0 = e^1/(e^1+e^0); w = 1 - |p0 - p1| = 1 - |2 p0 - 1|
    p0 = math.exp(1) / (math.exp(1) + 1)
    assert losses.confusion_weights(_t([[1.0, 0.0]])).item() == pytest.approx(
        1 - abs(2 * p0 - 1), rel=1e-6)
    # symmetric in the two classes
    a = losses.confusion_weights(_t([[0.3, -0.7]]))
    b = losses.confusion_weights(_t([[-0.7, 0.3]]))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # always within [0, 1]
    g = torch.Generator().manual_seed(0)
    w = losses.confusion_weights(torch.randn(1000, 2, generator=g) * 10)
    assert w.shape == (1000,)
    assert (w >= 0).all() and (w <= 1).all()


def test_kl_per_sample_matches_formula():
    zt = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    zs = [[0.0, 0.0, 0.0], [2.0, 1.0, -1.0]]
    for temp in (1.0, 4.0):
        got = losses.kl_per_sample(_t(zt), _t(zs), temp)
        assert got.shape == (2,)
        for i in range(2):
            assert got[i].item() == pytest.approx(_kl(zt[i], zs[i], temp), rel=1e-5, abs=1e-7)
    # KL >= 0 and zero when the logits agree
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 6, generator=g)
    assert torch.allclose(losses.kl_per_sample(z, z.clone(), 4.0), torch.zeros(16), atol=1e-7)
    assert (losses.kl_per_sample(z, torch.randn(16, 6, generator=g), 2.0) >= -1e-7).all()


def test_kl_per_sample_finite_when_teacher_prob_underflows():
    """Teacher [1000, 0] at T=1: p_t = [1, e^-1000 = 0 in float]. log_softmax avoids log(0)
    (the reference's torch.log(softmax) gives NaN, spec §8.13): KL = 1*(0 - log 1/2) = log 2."""
    zt = _t([[1000.0, 0.0]])
    zs = torch.zeros(1, 2, requires_grad=True)
    kl = losses.kl_per_sample(zt, zs, 1.0)
    assert torch.isfinite(kl).all()
    assert kl.item() == pytest.approx(math.log(2), rel=1e-6)
    kl.sum().backward()
    assert torch.isfinite(zs.grad).all()
    # d KL / d z_s = p_s - p_t = [0.5 - 1, 0.5 - 0]
    assert torch.allclose(zs.grad, _t([[-0.5, 0.5]]), atol=1e-6)


def test_weighted_kd_formula():
    zt = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.2, 0.1, 0.0]]
    zs = [[0.0, 0.0, 0.0], [2.0, 1.0, -1.0], [1.0, 1.0, 1.0]]
    w = [1.0, 0.5, 0.25]
    temp = 4.0
    expected = temp**2 * sum(wi * _kl(a, b, temp) for wi, a, b in zip(w, zt, zs)) / 3
    got = losses.weighted_kd(_t(zt), _t(zs), _t(w), temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # weights 0 -> exactly 0; weights 1 -> T^2 * mean KL
    assert losses.weighted_kd(_t(zt), _t(zs), torch.zeros(3), temp).item() == 0.0
    plain = temp**2 * sum(_kl(a, b, temp) for a, b in zip(zt, zs)) / 3
    assert losses.weighted_kd(_t(zt), _t(zs), torch.ones(3), temp).item() == pytest.approx(
        plain, rel=1e-5)


def test_weighted_kd_detached_weights_give_no_gradient_to_their_source():
    g = torch.Generator().manual_seed(2)
    zt = torch.randn(8, 6, generator=g)
    zs = torch.randn(8, 6, generator=g, requires_grad=True)
    d = torch.randn(8, 2, generator=g, requires_grad=True)

    losses.weighted_kd(zt, zs, losses.confusion_weights(d).detach(), 4.0).backward()
    assert d.grad is None  # nothing reached the domain logits
    assert zs.grad is not None and zs.grad.abs().sum() > 0  # the student still learns

    losses.weighted_kd(zt, zs, losses.confusion_weights(d), 4.0).backward()
    assert d.grad is not None and d.grad.abs().sum() > 0  # the §8.6 path


# ---------------------------------------------------------------- engine gradient routing

SPEC = get_spec("HAR")
B = 8


def _batch():
    g = torch.Generator().manual_seed(3)
    x_s = torch.randn(B, SPEC.channels, SPEC.length, generator=g)
    x_t = torch.randn(B, SPEC.channels, SPEC.length, generator=g) + 0.5
    y_s = torch.arange(B) % SPEC.classes
    t_s = TeacherOut(torch.randn(B, 128, generator=g), torch.randn(B, SPEC.classes, generator=g))
    t_t = TeacherOut(torch.randn(B, 128, generator=g), torch.randn(B, SPEC.classes, generator=g))
    return x_s, y_s, x_t, t_s, t_t


def _nets() -> UniKDNets:
    torch.manual_seed(0)
    nets = UniKDNets.for_spec(SPEC)
    nets.train()
    return nets


SCHED = StepSchedule(beta=0.5, alpha=0.7)


def _grads(nets: UniKDNets, hp: KDHparams, which: str = "loss", sched: StepSchedule = SCHED):
    """Gradients of every group after one source + target step at fixed dropout seeds.

    which="loss": the full objective; "dom": (1-beta)*lam_dom*(L_dom source + target) alone.
    """
    x_s, y_s, x_t, t_s, t_t = _batch()
    nets.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    src = source_terms(nets, x_s, y_s, t_s, sched, hp)
    torch.manual_seed(12)
    trg = target_terms(nets, x_t, t_t, sched, hp)
    if which == "loss":
        (src["loss"] + trg["loss"]).backward()
    else:
        ((1 - sched.beta) * hp.lam_dom * (src["dom"] + trg["dom"])).backward()
    return {"student": {**named_grads(nets.student),
                        **{f"adapter.{k}": v for k, v in named_grads(nets.adapter).items()}},
            "d_f": named_grads(nets.d_f), "d_d": named_grads(nets.d_d)}, src, trg


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _close(a: dict, b: dict, **tol) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], **tol) for k in a)


def _perturb(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_detached_generator_student_grad_independent_of_d_f():
    """adv_to_student=False (reference §8.2): D_f never reaches the student or the adapter."""
    hp = KDHparams(adv_to_student=False, detach_weights=True)
    nets = _nets()
    before, src, trg = _grads(nets, hp)
    assert "adv" not in src and "adv" not in trg
    assert any(v.abs().sum() > 0 for v in before["d_f"].values())  # D_f itself does train

    _perturb(nets.d_f)
    after, _, _ = _grads(nets, hp)
    assert _same(before["student"], after["student"])
    assert not _same(before["d_f"], after["d_f"])

    # "no D_f at all": drop D_f's own terms from the objective; the student sees no change
    x_s, y_s, x_t, t_s, t_t = _batch()
    nets.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    src = source_terms(nets, x_s, y_s, t_s, SCHED, hp)
    torch.manual_seed(12)
    trg = target_terms(nets, x_t, t_t, SCHED, hp)
    (src["loss"] - src["d_f"] + trg["loss"] - trg["d_f"]).backward()
    without = {**named_grads(nets.student),
               **{f"adapter.{k}": v for k, v in named_grads(nets.adapter).items()}}
    assert _close(before["student"], without, rtol=1e-6, atol=1e-8)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in nets.d_f.parameters())


def test_adversarial_generator_student_grad_depends_on_d_f():
    hp = KDHparams(adv_to_student=True, detach_weights=True)
    nets = _nets()
    before, src, trg = _grads(nets, hp)
    assert src["adv"].item() > 0 and trg["adv"].item() > 0
    _perturb(nets.d_f)
    after, _, _ = _grads(nets, hp)
    assert not _close(before["student"], after["student"], rtol=1e-5, atol=1e-7)
    # and the adapter in particular receives the generator gradient
    assert not _close({k: v for k, v in before["student"].items() if k.startswith("adapter")},
                      {k: v for k, v in after["student"].items() if k.startswith("adapter")},
                      rtol=1e-5, atol=1e-7)

    off, _, _ = _grads(_nets(), KDHparams(adv_to_student=False, detach_weights=True))
    on, _, _ = _grads(_nets(), hp)
    assert not _close(off["student"], on["student"], rtol=1e-5, atol=1e-7)


def test_d_f_grad_does_not_depend_on_adv_to_student():
    """The generator term evaluates D_f through detached parameters: D_f learns only from its
    own real/fake loss, whatever adv_to_student says."""
    off, _, _ = _grads(_nets(), KDHparams(adv_to_student=False, detach_weights=True))
    on, _, _ = _grads(_nets(), KDHparams(adv_to_student=True, detach_weights=True))
    assert any(v.abs().sum() > 0 for v in off["d_f"].values())
    assert _close(off["d_f"], on["d_f"], rtol=1e-6, atol=1e-9)


def test_detached_weights_d_d_learns_only_from_domain_loss():
    hp = KDHparams(detach_weights=True, target_kd=True)  # a target KD of the edge's own
    full, src, trg = _grads(_nets(), hp)
    assert src["kd"].item() > 0 and trg["kd"].item() > 0
    dom_only, _, _ = _grads(_nets(), hp, which="dom")
    assert any(v.abs().sum() > 0 for v in full["d_d"].values())
    assert _close(full["d_d"], dom_only["d_d"], rtol=1e-5, atol=1e-8)


def test_undetached_weights_d_d_also_learns_from_kd():
    """detach_weights=False (reference §8.6): beta*L_KD reaches D_d through w."""
    hp = KDHparams(detach_weights=False)
    full, _, _ = _grads(_nets(), hp)
    dom_only, _, _ = _grads(_nets(), hp, which="dom")
    assert not _close(full["d_d"], dom_only["d_d"], rtol=1e-5, atol=1e-8)
    # with beta = 0 the KD path carries no weight and the two agree again
    sched0 = StepSchedule(beta=0.0, alpha=SCHED.alpha)
    full0, _, _ = _grads(_nets(), hp, sched=sched0)
    dom0, _, _ = _grads(_nets(), hp, which="dom", sched=sched0)
    assert _close(full0["d_d"], dom0["d_d"], rtol=1e-5, atol=1e-8)


def test_class_prototypes_are_class_means_and_an_empty_class_gets_the_overall_mean():
    feat = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 2])
    protos = losses.class_prototypes(feat, y, 4)
    assert torch.equal(protos[0], torch.tensor([2.0, 1.0]))
    assert torch.equal(protos[2], torch.tensor([0.0, 4.0]))
    assert torch.allclose(protos[1], feat.mean(0)) and torch.allclose(protos[3], feat.mean(0))


def test_prototype_hint_targets_mix_prototypes_by_the_students_detached_prediction():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = torch.tensor([[10.0, -10.0], [0.0, 0.0]], requires_grad=True)
    targets = losses.prototype_hint_targets(logits, protos)
    assert torch.allclose(targets[0], protos[0], atol=1e-6)
    assert torch.allclose(targets[1], torch.tensor([0.5, 0.5]))
    assert not targets.requires_grad  # a target, not a path for gradients into the head
