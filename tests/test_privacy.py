"""Client-level differential privacy: clipping, noise, calibration, the epsilon ledger, local DP
on the wire, and central DP in a federation (issue 6, part 1)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch


from client.node.privacy import privatize
from server.fed.aggregate import ClientUpdate
from server.fed.run import run_federate
from server.fed.harness import InProcessGrid, load_component
from server.fed.privacy import (PrivacyPlan, calibrate_noise, epsilon_after, plan_privacy,
                            private_aggregate, uniform_mean)
from server.fed.rounds import federate
from shared.protocol import wire
from shared.config import load_config
from shared.errors import ConfigError, UnikdError
from shared.privacy import add_noise, clip_update, noise_generator, update_norm
from shared.protocol.records import RoundConfig, from_record, to_record

CLIENTS = 3
ROUNDS = 3
BASE = ["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128", f"fed.clients={CLIENTS}",
        f"fed.rounds={ROUNDS}", "fed.teacher_placement=source-only"]


def _update(scale: float, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {"student.grad": {"a": torch.randn(4, 3, generator=g) * scale,
                             "n": torch.tensor(5, dtype=torch.int64)},
            "d_f.grad": {"b": torch.randn(7, generator=g) * scale},
            "d_d.grad": {"c": torch.randn(2, 2, generator=g) * scale}}


# ---------------------------------------------------------------- pure maths


def test_clip_bounds_the_whole_update_not_each_record():
    up = _update(10.0)
    norm = update_norm(up)
    by_record = [update_norm({k: v}) for k, v in up.items()]
    assert math.isclose(norm, math.sqrt(sum(n * n for n in by_record)), rel_tol=1e-9)
    clipped, before = clip_update(up, 1.0)
    assert before == norm > 1.0
    assert math.isclose(update_norm(clipped), 1.0, rel_tol=1e-5)
    ratio = clipped["d_f.grad"]["b"] / up["d_f.grad"]["b"]  # one common scale for every record
    assert torch.allclose(ratio, torch.full_like(ratio, 1.0 / norm))
    assert torch.equal(clipped["student.grad"]["n"], up["student.grad"]["n"])  # counters untouched
    small = _update(1e-3)
    same, _ = clip_update(small, 1.0)
    assert all(torch.equal(same[r][k], small[r][k]) for r in small for k in small[r])
    assert not up["d_f.grad"]["b"].abs().max() < 1  # the input was not clipped in place


def test_noise_is_seeded_and_has_the_requested_std():
    zero = {"student.grad": {"a": torch.zeros(200_000)}}
    a = add_noise(zero, 0.5, noise_generator(3, 1, 7))["student.grad"]["a"]
    b = add_noise(zero, 0.5, noise_generator(3, 1, 7))["student.grad"]["a"]
    c = add_noise(zero, 0.5, noise_generator(3, 1, 8))["student.grad"]["a"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a.std()) - 0.5) < 0.01 and abs(float(a.mean())) < 0.01


def test_calibration_meets_the_target_and_accounts_each_round():
    for eps in (1.0, 3.0, 8.0):
        z = calibrate_noise(eps, 1e-5, 30)
        spent = epsilon_after(z, 30, 1e-5)
        assert spent <= eps * 1.001 and spent > eps * 0.98, (eps, z, spent)
    assert calibrate_noise(1.0, 1e-5, 30) > calibrate_noise(8.0, 1e-5, 30)
    assert calibrate_noise(3.0, 1e-5, 100) > calibrate_noise(3.0, 1e-5, 10)
    z = calibrate_noise(3.0, 1e-5, 10)
    per_round = [epsilon_after(z, r, 1e-5) for r in range(0, 11)]
    assert per_round[0] == 0.0 and all(a < b for a, b in zip(per_round, per_round[1:]))


def test_central_aggregate_is_the_uniform_mean_of_clipped_updates_plus_noise():
    ups = [ClientUpdate(c, n, {**_update(s, c), wire.STUDENT_BN: {"x": torch.ones(2)}}, {})
           for c, n, s in ((0, 10, 0.01), (1, 1000, 50.0), (2, 5, 0.02))]
    keys = tuple(wire.GRAD_RECORDS)
    quiet = PrivacyPlan("central", 1.0, 8.0, 1e-5, 10, 0.0)  # z = 0: exact clipped mean
    agg, stats = private_aggregate(ups, quiet, 0, 1)
    clipped = [ClientUpdate(u.client, u.num_examples, clip_update({k: u.arrays[k] for k in keys},
                                                                  1.0)[0], {}) for u in ups]
    want = uniform_mean(clipped)
    for k in keys:
        for name, t in want[k].items():
            if t.is_floating_point():
                assert torch.allclose(agg.arrays[k][name], t, atol=1e-7), (k, name)
    assert agg.arrays[wire.STUDENT_BN] == {}  # BN statistics are not released under DP
    assert stats["dp_clipped"] == 1  # only the large client exceeded the bound
    noisy, stats = private_aggregate(ups, PrivacyPlan("central", 1.0, 8.0, 1e-5, 10, 2.0), 0, 1)
    assert stats["dp_noise_std"] == pytest.approx(2.0 * 1.0 / 3)
    assert not torch.allclose(noisy.arrays["d_f.grad"]["b"], agg.arrays["d_f.grad"]["b"])


def _round_config(**dp) -> RoundConfig:
    return RoundConfig(round=1, epoch=1, step=0, global_step=0, beta=0.1, alpha=0.0, lr=1e-3,
                       local_steps=1, seed=0, batch_size=32, temperature=4.0, lam_ce=1.0,
                       lam_dom=1.0, target_kd=True, adv_to_student=False, detach_weights=True,
                       bn_policy="averaged", dataset="SYNTH", **dp)


def test_local_privatize_clips_noises_and_withholds_bn():
    grads = {"student": {"w": torch.full((50,), 3.0)}, "d_f": {"b": torch.ones(5)},
             "d_d": {"c": torch.ones(2)}}
    own = {"student.bn.running_mean": torch.full((4,), 7.0)}
    received = to_record({"student.bn.running_mean": torch.zeros(4), "student.w": torch.ones(50)})
    rc = _round_config(dp_mode="off")
    off = privatize(grads, own, received, rc, 1)
    assert off == (grads, own)
    rc = _round_config(dp_mode="local", dp_clip=0.5, dp_noise=0.0)
    g, bn = privatize(grads, own, received, rc, 1)
    assert math.isclose(update_norm(g), 0.5, rel_tol=1e-5)
    assert torch.equal(bn["student.bn.running_mean"], torch.zeros(4))  # the received buffers
    rc.dp_noise = 1.0
    g1, _ = privatize(grads, own, received, rc, 1)
    g2, _ = privatize(grads, own, received, rc, 1)
    g3, _ = privatize(grads, own, received, rc, 2)  # another client: other noise
    assert torch.equal(g1["student"]["w"], g2["student"]["w"])
    assert not torch.equal(g1["student"]["w"], g3["student"]["w"])
    assert float((g1["student"]["w"] - g["student"]["w"]).std()) == pytest.approx(1.0, rel=0.3)


def test_config_validates_dp_fields():
    cfg = load_config(overrides=["fed.dp=central", "fed.dp_epsilon=3", "fed.dp_clip=0.5"])
    assert (cfg.fed.dp, cfg.fed.dp_epsilon, cfg.fed.dp_clip) == ("central", 3.0, 0.5)
    for bad in ("fed.dp=global", "fed.dp_delta=0.5", "fed.dp_clip=0", "fed.dp_epsilon=-1"):
        with pytest.raises(ConfigError):
            load_config(overrides=[bad])
    assert plan_privacy(load_config(), 10) is None


def test_dp_refuses_a_federated_dann_teacher():
    cfg = load_config(overrides=[*BASE, "fed.dp=central", "fed.teacher_placement=edge"])
    grid = InProcessGrid(load_component("client.node.client_app:app"), CLIENTS)
    with pytest.raises(UnikdError, match="un-noised target gradients"):
        federate(grid, cfg, progress=False)
    assert grid.fault_log == []


# ---------------------------------------------------------------- federations


def test_central_dp_run_writes_the_epsilon_ledger(tmp_path):
    cfg = load_config(overrides=[*BASE, "fed.dp=central", "fed.dp_epsilon=3", f"out={tmp_path}"])
    run_dir = run_federate(cfg, progress=False)
    rows = list(csv.DictReader((run_dir / "privacy.csv").open()))
    assert [int(r["round"]) for r in rows] == list(range(1, ROUNDS + 1))
    eps = [float(r["epsilon"]) for r in rows]
    assert all(a < b for a, b in zip(eps, eps[1:])) and eps[-1] <= 3.0 * 1.001
    assert eps[-1] == pytest.approx(3.0, rel=0.02)  # calibrated to spend the budget
    summary = json.loads((run_dir / "privacy.json").read_text())
    assert summary["mode"] == "central" and summary["epsilon_spent"] == eps[-1]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dp"] == "central" and results["dp_epsilon_spent"] == eps[-1]
    assert math.isfinite(results["mf1"])
    assert "dp_epsilon" in (run_dir / "rounds.csv").read_text().splitlines()[0]


def test_central_dp_keeps_source_only_bn_and_is_deterministic():
    cfg = load_config(overrides=[*BASE, "fed.dp=central"])
    runs = [federate(InProcessGrid(load_component("client.node.client_app:app"), CLIENTS), cfg,
                     progress=False) for _ in range(2)]
    a, b = (r.cloud.nets.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded noise: same run, same numbers
    counters = {int(v) for k, v in runs[0].cloud.nets.student.named_buffers()
                if k.endswith("num_batches_tracked")}
    assert counters == {ROUNDS}  # one source update per round, no client BN composed
    plain = federate(InProcessGrid(load_component("client.node.client_app:app"), CLIENTS),
                     load_config(overrides=BASE), progress=False).cloud.nets.state_dict()
    assert any(not torch.equal(a[k], plain[k]) for k in a)


def test_wire_manifest_holds_with_local_dp():
    """tests/test_wire.py's independent checker on every reply of a local-DP federation."""
    from test_wire import check_reply

    from client.node.local_data import local_data
    from shared.data.loaders import Normalizer
    from shared.protocol.records import RoundConfig, SimSetup

    cfg = load_config(overrides=[*BASE, "fed.dp=local", "fed.dp_epsilon=1"])
    seen, windows, sent_bn = [], {}, {}
    grid = None

    def tap(request, reply):
        mtype, node = request.metadata.message_type, request.metadata.dst_node_id
        if mtype == "query":
            rc = RoundConfig.from_record(request.content[wire.CONFIG])
            sim = SimSetup.from_record(request.content[wire.SIM])
            stats = from_record(request.content[wire.NORM])
            data = local_data(rc, sim, dict(grid.contexts[node].node_config), node - 1000,
                              Normalizer(stats["mean"], stats["std"]))
            windows[node] = (data.num_examples, len(data.test))
        if mtype == "train":
            assert request.content[wire.CONFIG]["dp_mode"] == "local"
            sent_bn[(node, request.content[wire.CONFIG]["round"])] = \
                from_record(request.content[wire.STUDENT])
        seen.append((mtype, node, reply))

    grid = InProcessGrid(load_component("client.node.client_app:app"), CLIENTS, tap=tap)
    result = federate(grid, cfg, progress=False)
    assert result.rejected == [] and len(result.rounds) == ROUNDS
    assert {m for m, _, _ in seen} == {"query", "train", "evaluate"}
    for mtype, node, reply in seen:
        assert not reply.has_error(), reply.error.reason
        check_reply(mtype, reply.content, *windows[node])
        if mtype == "train":  # BN statistics withheld: exactly the buffers the node received
            rnd = reply.content[wire.METRICS]["round"]
            for name, t in from_record(reply.content[wire.STUDENT_BN]).items():
                assert torch.equal(t, sent_bn[(node, rnd)][name]), name
    eps = [r["dp_epsilon"] for r in result.rounds]
    assert eps[-1] == pytest.approx(1.0, rel=0.02)
