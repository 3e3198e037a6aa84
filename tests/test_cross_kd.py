"""The reference's cross-domain KD (target_kd=false) and its federable expectation.

The official code computes (1/B) sum_i w_i^t KL_i^s: target window i's confusion weight times
source window i's KL, paired only by two independent shuffles. Averaged over every pairing
that is mean_t(w) * mean_s(KL), value and gradient alike, which is what `cross_kd=expected`
optimises (the cloud holds KL_s, the edges hold w_t).
"""

from __future__ import annotations

import itertools

import torch

from shared.unikd import losses
from shared.data.datasets import get_spec
from shared.unikd.engine import KDHparams, StepSchedule, TeacherOut, UniKDNets, source_terms, target_terms

SPEC = get_spec("HAR")
T = 4.0


def test_expected_cross_kd_is_the_mean_over_all_pairings():
    g = torch.Generator().manual_seed(0)
    b = 5
    t_logits, s_logits = torch.randn(b, 6, generator=g), torch.randn(b, 6, generator=g)
    d_logits = torch.randn(b, 2, generator=g, requires_grad=True)  # D_d on target windows
    w = losses.confusion_weights(d_logits)
    pairings = [losses.weighted_kd(t_logits, s_logits, w[list(p)], T)
                for p in itertools.permutations(range(b))]
    reference = torch.stack(pairings).mean()
    expected = w.mean() * losses.weighted_kd(t_logits, s_logits, torch.ones(b), T)
    assert torch.allclose(reference, expected, rtol=1e-5)
    (g_ref,) = torch.autograd.grad(reference, d_logits, retain_graph=True)
    (g_exp,) = torch.autograd.grad(expected, d_logits)
    assert torch.allclose(g_ref, g_exp, rtol=1e-4, atol=1e-7)  # the same gradient into D_d


def test_the_split_terms_sum_to_the_expected_gradient():
    """Cloud half (mean w x grad KL_s) + edge half (KL_s x grad mean w) = grad of the product."""
    torch.manual_seed(1)
    nets = UniKDNets.for_spec(SPEC)
    xs, xt = torch.randn(8, 9, 128), torch.randn(8, 9, 128)
    ys = torch.arange(8) % 6
    t_src = TeacherOut(torch.randn(8, 128), torch.randn(8, 6))
    hp = KDHparams(target_kd=False, cross_kd="expected", detach_weights=False)
    sched = StepSchedule(beta=1.0, alpha=0.5)
    nets.eval()  # no dropout, fixed BN: both evaluations see the same function

    src = source_terms(nets, xs, ys, t_src, sched, hp)
    trg = target_terms(nets, xt, None, sched, hp, source_kd=src["cross_kd"].item())
    edge = torch.autograd.grad(trg["kd"], list(nets.d_d.parameters()), retain_graph=True)
    # the product computed in one graph
    h = nets.student.forward_features(xt)
    w = losses.confusion_weights(nets.d_d(h))
    joint = src["cross_kd"].detach() * w.mean()
    full = torch.autograd.grad(joint, list(nets.d_d.parameters()))
    for a, b in zip(edge, full):
        assert torch.allclose(a, b, atol=1e-7)
