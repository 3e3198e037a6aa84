"""Client-level differential privacy: clipping, noise, calibration, the epsilon ledger, local DP
on the wire, and central DP in a federation (issue 6, part 1)."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
from flwr.app import RecordDict

from client.node.privacy import privatize
from client.node.record_dp import node_secret
from server.fed.aggregate import ClientUpdate
from server.fed.run import run_federate
from server.fed.harness import InProcessGrid, load_component
from server.fed.dp.client_level import (CENTRAL_STREAM, PrivacyPlan, calibrate_noise,
                                        cloud_secret, epsilon_after, plan_privacy,
                                        private_aggregate, uniform_mean)
from server.fed.rounds import federate
from shared.protocol import wire
from shared.config import load_config
from shared.errors import ConfigError, UnikdError
from shared.privacy.clipping import (add_noise, central_noise_std, clip_update, local_noise_std,
                            noise_generator, update_norm)
from shared.protocol.records import RoundConfig, from_record, to_record
from shared.unikd.settings import KDHparams, StepSchedule
from shared.clock.seeding import client_stream

CLIENTS = 3
ROUNDS = 3
BASE = ["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128", f"fed.clients={CLIENTS}",
        f"fed.rounds={ROUNDS}", "fed.teacher_placement=source-only",
        "fed.local_steps_mode=edge", "fed.local_steps=1"]  # a round per step


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


def test_per_network_clip_gives_each_network_its_share_of_the_bound():
    """fed.dp_clip_scope=per-network: each record to C / sqrt(3), the whole still within C, so a
    large D_d gradient no longer shrinks the student's (the joint clip scales all by one)."""
    up = _update(1.0)
    up["d_d.grad"]["c"] = up["d_d.grad"]["c"] * 1000  # one network dominates the norm
    joint, norm = clip_update(up, 1.0)
    split, norm_split = clip_update(up, 1.0, per_network=True)
    assert norm_split == norm == update_norm(up)  # the whole update's norm, before clipping
    bound = 1.0 / math.sqrt(3)
    for rec in up:
        assert update_norm({rec: split[rec]}) <= bound * (1 + 1e-6), rec
    assert update_norm(split) <= 1.0 + 1e-6
    student = update_norm({"student.grad": split["student.grad"]})
    assert student > 100 * update_norm({"student.grad": joint["student.grad"]})
    assert torch.equal(split["student.grad"]["n"], up["student.grad"]["n"])  # counters untouched
    small = _update(1e-3)
    same, _ = clip_update(small, 1.0, per_network=True)  # all within their share: unchanged
    assert all(torch.equal(same[r][k], small[r][k]) for r in small for k in small[r])


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
    agg, stats = private_aggregate(ups, quiet, 0, 1, None)
    clipped = [ClientUpdate(u.client, u.num_examples, clip_update({k: u.arrays[k] for k in keys},
                                                                  1.0)[0], {}) for u in ups]
    want = uniform_mean(clipped)
    for k in keys:
        for name, t in want[k].items():
            if t.is_floating_point():
                assert torch.allclose(agg.arrays[k][name], t, atol=1e-7), (k, name)
    assert agg.arrays[wire.STUDENT_BN] == {}  # BN statistics are not released under DP
    assert stats["dp_clipped"] == 1  # only the large client exceeded the bound
    noisy, stats = private_aggregate(ups, PrivacyPlan("central", 1.0, 8.0, 1e-5, 10, 2.0), 0, 1,
                                     None)
    assert stats["dp_noise_std"] == pytest.approx(2.0 * 1.0 / 3)
    assert not torch.allclose(noisy.arrays["d_f.grad"]["b"], agg.arrays["d_f.grad"]["b"])


def test_central_aggregate_clips_per_network_when_the_plan_says_so():
    ups = [ClientUpdate(c, 10, {**_update(s, c), wire.STUDENT_BN: {}}, {})
           for c, s in ((0, 30.0), (1, 50.0))]
    keys = tuple(wire.GRAD_RECORDS)
    plan = PrivacyPlan("central", 1.0, 8.0, 1e-5, 10, 0.0, per_network=True)
    agg, _ = private_aggregate(ups, plan, 0, 1, None)
    clipped = [ClientUpdate(u.client, 10, clip_update({k: u.arrays[k] for k in keys}, 1.0,
                                                      per_network=True)[0], {}) for u in ups]
    want = uniform_mean(clipped)
    for k in keys:
        for name, t in want[k].items():
            if t.is_floating_point():
                assert torch.allclose(agg.arrays[k][name], t, atol=1e-7), (k, name)
    joint, _ = private_aggregate(ups, PrivacyPlan("central", 1.0, 8.0, 1e-5, 10, 0.0), 0, 1, None)
    assert not torch.allclose(joint.arrays["d_f.grad"]["b"], agg.arrays["d_f.grad"]["b"])
    cfg = load_config(None, [*BASE, "fed.dp=central", "fed.dp_clip_scope=per-network"])
    assert plan_privacy(cfg, 10).per_network
    assert not plan_privacy(load_config(None, [*BASE, "fed.dp=central"]), 10).per_network


def _round_config(**dp) -> RoundConfig:
    return RoundConfig(round=1, epoch=1, step=0, global_step=0,
                       schedule=StepSchedule(beta=0.1, alpha=0.0), lr=1e-3, local_steps=1, seed=0,
                       batch_size=32, hparams=KDHparams(detach_weights=True),
                       bn_policy="averaged", dataset="SYNTH", **dp)


def test_local_privatize_clips_noises_and_withholds_bn():
    grads = {"student": {"w": torch.full((50,), 3.0)}, "d_f": {"b": torch.ones(5)},
             "d_d": {"c": torch.ones(2)}}
    own = {"student.bn.running_mean": torch.full((4,), 7.0)}
    received = to_record({"student.bn.running_mean": torch.zeros(4), "student.w": torch.ones(50)})
    rc = _round_config(dp_mode="off")
    off = privatize(grads, own, received, rc, 1, None)
    assert off == (grads, own)
    rc = _round_config(dp_mode="local", dp_clip=0.5, dp_noise=0.0)
    g, bn = privatize(grads, own, received, rc, 1, None)
    assert math.isclose(update_norm(g), 0.5, rel_tol=1e-5)
    assert torch.equal(bn["student.bn.running_mean"], torch.zeros(4))  # the received buffers
    rc.dp_noise = 1.0
    g1, _ = privatize(grads, own, received, rc, 1, None)
    g2, _ = privatize(grads, own, received, rc, 1, None)
    g3, _ = privatize(grads, own, received, rc, 2, None)  # another client: other noise
    assert torch.equal(g1["student"]["w"], g2["student"]["w"])  # reproducible simulation
    assert not torch.equal(g1["student"]["w"], g3["student"]["w"])
    assert float((g1["student"]["w"] - g["student"]["w"]).std()) == pytest.approx(1.0, rel=0.3)
    rc = _round_config(dp_mode="local", dp_clip=0.5, dp_noise=0.0, dp_clip_scope="per-network")
    g, _ = privatize(grads, own, received, rc, 1, None)
    parts = [update_norm({k: v}) for k, v in g.items()]
    assert all(n <= 0.5 / math.sqrt(3) * (1 + 1e-6) for n in parts), parts
    assert parts[1] == pytest.approx(0.5 / math.sqrt(3), rel=1e-5)  # d_f: its own share, whole


def _seed_noise(update: dict, std: float, seed: int, stream: int, rnd: int) -> dict:
    """The noise a party knowing only the run seed can regenerate (the old, leaky draw)."""
    zero = {rec: {k: torch.zeros_like(t) for k, t in arrays.items()}
            for rec, arrays in update.items()}
    return add_noise(zero, std, noise_generator(seed, stream, rnd))


def _minus(a: dict, b: dict) -> dict:
    return {rec: {k: a[rec][k].double() - b[rec][k].double() for k in a[rec]} for rec in a}


def test_local_noise_is_keyed_by_the_node_secret_not_the_run_seed():
    """A cloud that knows the run seed regenerates the seed-only noise and subtracts it: that
    recovers the clipped update exactly in the reproducible simulation (secret None), and
    nothing usable from a node that holds a secret."""
    grads = {"student": {"w": torch.linspace(-1, 1, 400)}, "d_f": {"b": torch.ones(30)},
             "d_d": {"c": torch.ones(20)}}
    received = to_record({"student.w": torch.ones(400)})
    rc = _round_config(dp_mode="local", dp_clip=0.5, dp_noise=1.0)
    clipped, _ = clip_update(grads, 0.5)
    std = local_noise_std(1.0, 0.5)
    seed_noise = _seed_noise(clipped, std, rc.seed, client_stream(1), rc.round)
    sim, _ = privatize(grads, {}, received, rc, 1, None)
    assert update_norm(_minus(_minus(sim, seed_noise), clipped)) < 1e-5  # the attack works here
    state = RecordDict()
    secret = node_secret({"partition-id": 1}, state)  # a deployed node: no dp-reproducible
    assert secret is not None and len(secret) == 32
    assert node_secret({"partition-id": 1}, state) == secret  # kept in the node's state
    assert node_secret({"dp-reproducible": True}, RecordDict()) is None
    dep, _ = privatize(grads, {}, received, rc, 1, secret)
    left = _minus(_minus(dep, seed_noise), clipped)  # what the attack leaves: pure noise
    assert update_norm(left) > 10 * 0.5
    other, _ = privatize(grads, {}, received, rc, 1, os.urandom(32))  # another node's secret
    assert not torch.equal(other["student"]["w"], dep["student"]["w"])
    noise = _minus(dep, clipped)["student"]["w"]
    assert float(noise.std()) == pytest.approx(std, rel=0.2)  # still the calibrated noise


def test_a_deployed_local_dp_node_draws_noise_the_cloud_cannot_regenerate():
    """The edge ClientApp end to end: a node config without `dp-reproducible` (every deployed
    node) keys its local-DP noise with its secret; the in-process default stays reproducible."""
    cfg = load_config(overrides=[*BASE, "fed.dp=local", "fed.dp_epsilon=1", "fed.rounds=1",
                                 "fed.clients=2"])
    app = load_component("client.node.client_app:app")

    def round_one(node_config=None) -> tuple[dict, RoundConfig]:
        got = {}

        def tap(request, reply):
            if request.metadata.message_type == "train" and request.metadata.dst_node_id == 1000:
                got["rc"] = RoundConfig.from_record(request.content[wire.CONFIG])
                got["grads"] = {g: from_record(reply.content[k]) for g, k in
                                (("student", wire.STUDENT_GRAD), ("d_f", wire.D_F_GRAD),
                                 ("d_d", wire.D_D_GRAD))}

        federate(InProcessGrid(app, 2, node_config=node_config, tap=tap), cfg, progress=False)
        return got["grads"], got["rc"]

    deployed = lambda i: {"partition-id": i, "num-partitions": 2}  # noqa: E731
    sim, rc = round_one()
    sim_again, _ = round_one()
    dep_a, _ = round_one(deployed)
    dep_b, _ = round_one(deployed)
    assert rc.dp_mode == "local" and rc.dp_noise > 0
    std = local_noise_std(rc.dp_noise, rc.dp_clip)
    seed_noise = _seed_noise(sim, std, rc.seed, client_stream(0), rc.round)
    # the simulation is reproducible, and there the seed gives the clipped update away
    assert all(torch.equal(sim[g][k], sim_again[g][k]) for g in sim for k in sim[g])
    assert update_norm(_minus(sim, seed_noise)) <= rc.dp_clip * 1.001
    # a deployed node: fresh noise per node secret; subtracting the seed's noise leaves noise
    for dep in (dep_a, dep_b):
        assert update_norm(_minus(dep, seed_noise)) > 10 * rc.dp_clip
    assert not any(torch.equal(dep_a[g][k], dep_b[g][k]) for g in dep_a for k in dep_a[g])


def test_central_noise_is_keyed_by_the_cloud_secret_outside_the_simulation():
    ups = [ClientUpdate(c, 10, {**_update(0.01, c), wire.STUDENT_BN: {}}, {}) for c in range(3)]
    plan = PrivacyPlan("central", 1.0, 8.0, 1e-5, 10, 2.0)
    quiet, _ = private_aggregate(ups, PrivacyPlan("central", 1.0, 8.0, 1e-5, 10, 0.0), 5, 4, None)
    keys = tuple(wire.GRAD_RECORDS)
    clean = {k: quiet.arrays[k] for k in keys}
    std = central_noise_std(2.0, 1.0, 3)
    seed_noise = _seed_noise(clean, std, 5, CENTRAL_STREAM, 4)
    sim, _ = private_aggregate(ups, plan, 5, 4, None)
    recovered = _minus({k: sim.arrays[k] for k in keys}, seed_noise)
    assert update_norm(_minus(recovered, clean)) < 1e-5  # seed-only noise: a node could subtract it
    secret = cloud_secret(object())  # a Flower Grid: no dp_reproducible
    assert secret is not None and len(secret) == 32 and cloud_secret(object()) != secret
    assert cloud_secret(InProcessGrid(load_component("client.node.client_app:app"), 1)) is None
    dep, _ = private_aggregate(ups, plan, 5, 4, secret)
    left = _minus(_minus({k: dep.arrays[k] for k in keys}, seed_noise), clean)
    # the seed's noise is not the noise that was added. What is left is the difference of two
    # independent draws: |left|^2 / (2 std^2) ~ chi2(24) (23 floats and the count), so
    # |left| > std fails with p < 1e-12, and the attack above leaves < 1e-5. A bound of
    # 5 std failed about 3% of runs.
    assert update_norm(left) > std
    again, _ = private_aggregate(ups, plan, 5, 4, secret)
    assert torch.equal(again.arrays["d_f.grad"]["b"], dep.arrays["d_f.grad"]["b"])


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


class DeployedGrid(InProcessGrid):
    """The in-process Grid standing in for Flower's: it does not declare `dp_reproducible`."""

    dp_reproducible = False


def test_a_deployed_cloud_draws_central_noise_no_seed_holder_can_regenerate():
    """Every node gets the run seed in its round config: with seed-only central noise, two
    deployments of one config would add the very same noise (and a node could subtract it)."""
    cfg = load_config(overrides=[*BASE, "fed.dp=central", "fed.rounds=1"])
    app = load_component("client.node.client_app:app")
    sim = [federate(InProcessGrid(app, CLIENTS), cfg, progress=False) for _ in range(2)]
    dep = [federate(DeployedGrid(app, CLIENTS), cfg, progress=False) for _ in range(2)]
    weights = [r.cloud.nets.student.state_dict() for r in (*sim, *dep)]
    names = [k for k, v in weights[0].items() if v.is_floating_point() and "bn" not in k]
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in names)  # noqa: E731
    assert same(weights[0], weights[1])  # the simulation reproduces itself
    assert not same(weights[0], weights[2]) and not same(weights[2], weights[3])


def test_wire_manifest_holds_with_local_dp():
    """tests/test_wire.py's independent checker on every reply of a local-DP federation."""
    from test_wire import check_reply

    from client.node.local_data import local_data
    from shared.data.loaders import Normalizer
    from shared.protocol.records import SetupConfig, SimSetup

    cfg = load_config(overrides=[*BASE, "fed.dp=local", "fed.dp_epsilon=1"])
    seen, windows, sent_bn = [], {}, {}
    grid = None

    def tap(request, reply):
        mtype, node = request.metadata.message_type, request.metadata.dst_node_id
        if mtype == "query":
            rc = SetupConfig.from_record(request.content[wire.CONFIG])
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


def test_a_clip_scope_without_dp_is_logged_not_silently_ignored(caplog):
    from server.fed.dp.federation import check_clip_scope

    with caplog.at_level("WARNING", logger="server.fed.dp.federation"):
        check_clip_scope(load_config(None, [*BASE, "fed.dp_clip_scope=per-network"]))
    assert "fed.dp_clip_scope=per-network has no effect" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="server.fed.dp.federation"):
        check_clip_scope(load_config(None, BASE))  # the default scope needs nothing
        for mode in ("record", "central", "local"):
            check_clip_scope(load_config(None, [*BASE, f"fed.dp={mode}",
                                                "fed.dp_clip_scope=per-network"]))
    assert "dp_clip_scope" not in caplog.text
