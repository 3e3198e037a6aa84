"""Record-level DP (`fed.dp: record`, issue 13): per-window gradients, clipping, Poisson
sampling, frozen BN, the accountant, and a federation whose replies carry nothing else."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from shared.unikd.settings import DannTargetTerms
from client.node.record_dp import (DannTargetLoss, TargetLoss, record_unikd_round,
                                   released_count)
from server.fed.dp.record_level import calibrate_record_noise
from shared.privacy.accounting import RDP_ORDERS, record_epsilon, record_event
from server.fed.run import run_federate
from shared.config import load_config
from shared.data.datasets import get_spec
from shared.privacy.dp_sgd import (clipped_sum, dp_generator, frozen_bn, noisy_mean, per_sample_grads,
                           per_sample_norms, poisson_batch, sampling_rate)
from shared.unikd.engine import KDHparams, StepSchedule, TeacherOut, UniKDNets
from shared.unikd.models import DomainDisc, teacher_for
from shared.protocol import wire
from shared.protocol.records import RoundConfig


def _no_dropout(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _loop_grads(loss: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> list[dict]:
    out = []
    for i in range(len(batch[0])):
        loss.zero_grad(set_to_none=True)
        loss(*(b[i:i + 1] for b in batch)).backward()
        out.append({k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                    for k, p in loss.named_parameters()})
    return out


@pytest.mark.parametrize("hp", [KDHparams(detach_weights=False),
                                KDHparams(adv_to_student=True, detach_weights=True)])
def test_per_window_grads_equal_a_loop_of_single_window_backwards(hp):
    # Prepare
    torch.manual_seed(0)
    spec = get_spec("SYNTH")
    nets = UniKDNets.for_spec(spec)
    _no_dropout(nets)
    x = torch.randn(5, spec.channels, spec.length)
    feat, logits = torch.randn(5, 128), torch.randn(5, spec.classes)
    loss = TargetLoss(nets, StepSchedule(beta=0.4, alpha=0.7), hp)
    # Execute
    with frozen_bn(nets):
        fast = per_sample_grads(loss, (x, feat, logits))
        slow = _loop_grads(loss, (x, feat, logits))
    # Assert: every parameter of student, adapter, D_f and D_d, window by window
    assert {k.split(".")[1] for k in fast} == {"student", "adapter", "d_f", "d_d"}
    for i, ref in enumerate(slow):
        for k, g in ref.items():
            assert torch.allclose(fast[k][i], g, atol=1e-6, rtol=1e-5), (i, k)


def test_the_pseudo_label_term_is_per_window(monkeypatch):
    """With its strong view fixed (a deterministic stand-in: vmap draws other random views than
    a loop), the pseudo-label CE is a sum over windows: per-window gradients equal the loop."""
    import shared.unikd.engine as engine

    monkeypatch.setattr(engine, "strong_view", lambda x, gen: 0.5 * x.flip(-1) + 0.1)
    torch.manual_seed(2)
    spec = get_spec("SYNTH")
    nets = UniKDNets.for_spec(spec)
    _no_dropout(nets)
    x = torch.randn(5, spec.channels, spec.length)
    feat, logits = torch.randn(5, 128), 5.0 * torch.randn(5, spec.classes)
    loss = TargetLoss(nets, StepSchedule(beta=0.4, alpha=0.7),
                      KDHparams(pl_weight=2.0, pl_threshold=0.5))
    loss.augment = torch.Generator().manual_seed(0)
    with frozen_bn(nets):
        fast = per_sample_grads(loss, (x, feat, logits))
        slow = _loop_grads(loss, (x, feat, logits))
    for i, ref in enumerate(slow):
        for k, g in ref.items():
            assert torch.allclose(fast[k][i], g, atol=1e-6, rtol=1e-5), (i, k)


@pytest.mark.parametrize("weights", [DannTargetTerms(), DannTargetTerms(w_dom=0.7, w_ent=0.5)])
def test_per_window_dann_grads_equal_the_loop(weights):
    """The teacher's target half, its entropy term included, is a sum of per-window parts."""
    torch.manual_seed(1)
    spec = get_spec("SYNTH")
    teacher, disc = teacher_for(spec), DomainDisc(128, spec.d_d_hidden)
    _no_dropout(teacher)
    loss = DannTargetLoss(teacher, disc, alpha=0.5, weights=weights)
    x = torch.randn(4, spec.channels, spec.length)
    with frozen_bn(teacher):
        fast = per_sample_grads(loss, (x,))
        slow = _loop_grads(loss, (x,))
    for i, ref in enumerate(slow):
        for k, g in ref.items():
            assert torch.allclose(fast[k][i], g, atol=1e-6, rtol=1e-5), (i, k)


def test_one_clipping_bound_over_all_parameters_and_noise_on_the_sum():
    per = {"a": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "b": torch.tensor([[0.0], [0.0]])}
    norms = per_sample_norms(per)
    assert torch.allclose(norms, torch.tensor([5.0, 0.5], dtype=torch.float64))
    summed, _ = clipped_sum(per, clip=1.0)
    assert torch.allclose(summed["a"], torch.tensor([0.6 + 0.3, 0.8 + 0.4]))  # big one scaled
    quiet = noisy_mean(summed, 0.0, 4.0, torch.Generator().manual_seed(0))
    assert torch.allclose(quiet["a"], summed["a"] / 4)  # divided by the EXPECTED batch size
    z = {"a": torch.zeros(100_000)}
    noisy = noisy_mean(z, 2.0, 1.0, torch.Generator().manual_seed(0))["a"]
    assert abs(float(noisy.std()) - 2.0) < 0.03


def test_poisson_sampling_rate_and_secret_keyed_draws():
    assert sampling_rate(32, 320) == pytest.approx(0.1) and sampling_rate(32, 10) == 1.0
    sizes = [len(poisson_batch(1000, 0.05, torch.Generator().manual_seed(s))) for s in range(200)]
    assert abs(sum(sizes) / len(sizes) - 50) < 2 and len(set(sizes)) > 5  # sizes vary
    a = torch.rand(4, generator=dp_generator(0, 1, 2, 40, None))
    b = torch.rand(4, generator=dp_generator(0, 1, 2, 40, None))
    c = torch.rand(4, generator=dp_generator(0, 1, 2, 40, b"node secret"))
    assert torch.equal(a, b) and not torch.equal(a, c)  # the secret changes every draw


def _rc(**kw) -> RoundConfig:
    base = dict(round=1, epoch=1, step=0, global_step=0,
                schedule=StepSchedule(beta=0.3, alpha=0.5), lr=1e-2, local_steps=2, seed=0,
                batch_size=8, hparams=KDHparams(detach_weights=False),
                bn_policy="averaged", dataset="SYNTH", dp_mode="record", dp_clip=1.0,
                dp_noise=1.0, dp_count_std=5.0)
    return RoundConfig(**{**base, **kw})


def test_edge_round_freezes_bn_and_returns_parameter_shaped_noisy_gradients():
    torch.manual_seed(0)
    spec = get_spec("SYNTH")
    nets = UniKDNets.for_spec(spec)
    bn = {k: v.clone() for k, v in nets.student.named_buffers()}
    x = torch.randn(40, spec.channels, spec.length)
    teacher = TeacherOut(torch.randn(40, 128), torch.randn(40, spec.classes))
    rc = _rc()
    state: dict = {}
    count = released_count(40, rc, 0, None, state)
    assert released_count(999, rc, 0, None, state) == count  # released once, then reused
    g1 = record_unikd_round(nets, x, teacher, rc, 0, None, count)
    assert all(torch.equal(v, bn[k]) for k, v in nets.student.named_buffers())  # BN untouched
    nets2 = UniKDNets.for_spec(spec)
    nets2.load_state_dict(nets.state_dict())
    shapes = {"student": {f"student.{k}": p.shape for k, p in nets.student.named_parameters()}}
    assert set(shapes["student"]) <= set(g1["student"])
    assert set(g1["d_f"]) == {k for k, _ in nets.d_f.named_parameters()}
    other = record_unikd_round(UniKDNets.for_spec(spec), x, teacher, rc, 0, b"secret", count)
    assert not torch.equal(other["d_d"]["net.0.weight"], g1["d_d"]["net.0.weight"])


def test_the_label_free_terms_under_record_dp():
    """Pseudo-labels run per window on a node; information maximisation, whose diversity term
    couples a batch's windows, is refused by the node too (the cloud refuses it at start)."""
    torch.manual_seed(0)
    spec = get_spec("SYNTH")
    x = torch.randn(40, spec.channels, spec.length)
    teacher = TeacherOut(torch.randn(40, 128), 5.0 * torch.randn(40, spec.classes))
    state = UniKDNets.for_spec(spec).state_dict()

    def round_with(hp: KDHparams):
        nets = UniKDNets.for_spec(spec)
        nets.load_state_dict(state)
        return record_unikd_round(nets, x, teacher, _rc(hparams=hp), 0, None, 40)

    off = round_with(KDHparams(detach_weights=False))
    on = round_with(KDHparams(detach_weights=False, pl_weight=1.0, pl_threshold=0.5))
    again = round_with(KDHparams(detach_weights=False, pl_weight=1.0, pl_threshold=0.5))
    head = "student.head.weight"
    assert torch.isfinite(on["student"][head]).all()
    assert not torch.equal(on["student"][head], off["student"][head])
    assert torch.equal(on["student"][head], again["student"][head])  # seeded views, no secret
    with pytest.raises(ValueError, match="distill.im_weight=0.5"):
        round_with(KDHparams(im_weight=0.5))


def test_accountant_matches_dp_accounting_and_calibration_meets_the_target():
    from dp_accounting import rdp

    steps = ((0.2, 30), (0.05, 200))
    z = calibrate_record_noise(4.0, 1e-5, 20.0, steps)
    acc = rdp.RdpAccountant(list(RDP_ORDERS))
    acc.compose(record_event(z, 20.0, steps))
    assert record_epsilon(z, 20.0, 1e-5, steps) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert 3.9 < record_epsilon(z, 20.0, 1e-5, steps) <= 4.0 + 1e-3
    fewer = record_epsilon(z, 20.0, 1e-5, ((0.2, 30), (0.05, 100)))
    assert fewer < record_epsilon(z, 20.0, 1e-5, steps)  # the ledger grows step by step


def test_record_dp_federation_sends_only_noisy_gradients_and_writes_the_ledger(tmp_path,
                                                                              monkeypatch):
    # Prepare: federated DANN teacher + UNI-KD, both under record DP; tap every reply
    cfg = load_config(overrides=["distill.epochs=1", "teacher.epochs=1",
                                 "teacher.batch_size=128", "fed.clients=2", "fed.rounds=2",
                                 "fed.dp=record", "fed.dp_epsilon=8",
                                 "fed.workers=1",  # the sequential grid, patched below
                                 f"out={tmp_path}"])
    replies = []
    import server.fed.run as run_mod

    real = run_mod.InProcessGrid

    def tapped(app, n, **kw):
        return real(app, n, tap=lambda req, rep: replies.append((req.metadata.message_type,
                                                                   rep)), **kw)

    monkeypatch.setattr(run_mod, "InProcessGrid", tapped)
    run_dir = run_federate(cfg, progress=False)
    # Assert: no BN statistics, no losses; counts are the released (noisy) ones
    kinds = {t for t, _ in replies}
    assert {"query", "train.teacher", "train"} <= kinds
    for mtype, rep in replies:
        if mtype in ("train", "train.teacher"):
            assert wire.STUDENT_BN not in rep.content and wire.TEACHER_BN not in rep.content
            assert set(rep.content[wire.METRICS]) <= {"client-id", "round", "num-examples",
                                                     "local-steps"}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dp"] == "record" and 0 < results["epsilon"] <= 8.0 + 1e-3
    assert results["delta"] == 1e-5
    rows = list(csv.DictReader((run_dir / "privacy_ledger.csv").open()))
    assert {r["phase"] for r in rows} == {"teacher", "unikd"}
    assert {r["client"] for r in rows} == {"0", "1"}
    last = [float(r["epsilon"]) for r in rows if r["phase"] == "unikd" and r["round"] == "2"]
    assert len(last) == 2 and max(last) == pytest.approx(results["epsilon"])


def test_per_network_clipping_bounds_each_network_and_the_whole():
    """fed.dp_clip_scope=per-network: each network's part of a window's gradient is clipped to
    C / sqrt(G) on its own, so a large D_d gradient no longer shrinks the student's, and every
    window's whole gradient still has norm <= C (the sensitivity the accountant assumes)."""
    from client.node.record_dp import network_of
    from shared.privacy.dp_sgd import clipped_sum

    g = torch.Generator().manual_seed(0)
    per_sample = {"nets.student.w": torch.randn(4, 10, generator=g) * 0.01,  # small: kept whole
                  "nets.adapter.b": torch.randn(4, 3, generator=g) * 0.01,
                  "nets.d_f.w": torch.randn(4, 6, generator=g) * 5.0,
                  "nets.d_d.w": torch.randn(4, 8, generator=g) * 50.0}
    joint, _ = clipped_sum(per_sample, 1.0)
    split, norms = clipped_sum(per_sample, 1.0, network_of)
    assert {network_of(k) for k in per_sample} == {"student", "d_f", "d_d"}
    # the student's tiny part passes unclipped per window; jointly it was crushed by D_d's norm
    assert torch.allclose(split["nets.student.w"], per_sample["nets.student.w"].sum(0))
    assert split["nets.student.w"].norm() > 100 * joint["nets.student.w"].norm()
    bound = 1.0 / 3 ** 0.5
    for i in range(4):  # one window at a time: each network <= C/sqrt(3), the whole <= C
        one, _ = clipped_sum({k: v[i:i + 1] for k, v in per_sample.items()}, 1.0, network_of)
        assert one["nets.d_d.w"].norm() <= bound + 1e-6 and one["nets.d_f.w"].norm() <= bound + 1e-6
        assert sum(v.pow(2).sum() for v in one.values()).sqrt() <= 1.0 + 1e-6
    assert norms.shape == (4,) and torch.all(norms > 50)  # the norms before clipping
    assert network_of("teacher.conv.0.weight") == "teacher" and network_of("disc.net.0.bias") == "disc"
