"""Small in-process federations: failures, min_clients, BN policies, teacher placements,
partitions, determinism, local steps and bytes on the wire.

Every run is tiny (3 clients, 1-3 rounds on the embedded synthetic data); runs that several
tests share are cached for the module.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
import torch

import client.node.client_app as client_app
from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import FedResult, federate
from shared.protocol import wire
from shared.config import load_config
from shared.data.scenario import load_scenario, load_split, resolve_spec
from shared.errors import DataError, UnikdError
from shared.protocol.records import from_record, student_state
from shared.unikd.engine import target_passes
from shared.unikd.settings import KDHparams

CLIENTS = 3
ROUNDS = 3
BASE = ("distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128",
        f"fed.clients={CLIENTS}", f"fed.rounds={ROUNDS}", "fed.teacher_placement=source-only",
        "fed.local_steps_mode=edge", "fed.local_steps=1")  # a round per step, member after member


@dataclass
class Run:
    cfg: object
    result: FedResult
    grid: InProcessGrid
    requests: list = field(default_factory=list)  # (type, node, request)
    replies: list = field(default_factory=list)  # (type, node, reply)

    def of(self, mtype: str) -> list:
        return [(n, r) for t, n, r in self.replies if t == mtype]

    def counts(self) -> dict[int, int]:
        """Training windows per node, as the query replies report them."""
        return {n: r.content[wire.METRICS]["num-examples"] for n, r in self.of("query")
                if not r.has_error()}


def federation(*overrides: str) -> Run:
    cfg = load_config(overrides=[*BASE, *overrides])
    run = Run(cfg, None, None)  # type: ignore[arg-type]

    def tap(request, reply):
        mtype, node = request.metadata.message_type, request.metadata.dst_node_id
        run.requests.append((mtype, node, request))
        run.replies.append((mtype, node, reply))

    run.grid = InProcessGrid(load_component("client.node.client_app:app"), CLIENTS, tap=tap)
    run.result = federate(run.grid, cfg, progress=False)
    return run


_CACHE: dict[tuple[str, ...], Run] = {}


def cached(*overrides: str) -> Run:
    if overrides not in _CACHE:
        _CACHE[overrides] = federation(*overrides)
    return _CACHE[overrides]


def finite_mf1(run: Run) -> float:
    mf1 = run.result.final.get("mf1")
    assert mf1 is not None and math.isfinite(mf1) and 0.0 <= mf1 <= 100.0, run.result.final
    return mf1


def cloud_state(run: Run) -> dict[str, torch.Tensor]:
    nets = run.result.cloud.nets
    return {**student_state(nets), **{f"d_f.{k}": v for k, v in nets.d_f.state_dict().items()},
            **{f"d_d.{k}": v for k, v in nets.d_d.state_dict().items()}}


# ---------------------------------------------------------------- (a) a failing client


def test_failing_client_does_not_stop_the_run(monkeypatch, caplog):
    real = client_app.local_data

    def broken(rc, sim, node_config, client, norm, spec=None):
        if client == 1:
            raise DataError("/node1/train_1.pt", "disk unreadable")
        return real(rc, sim, node_config, client, norm, spec)

    monkeypatch.setattr(client_app, "local_data", broken)
    with caplog.at_level(logging.WARNING):
        run = federation("fed.teacher_placement=edge")  # federated teacher: every message type
    res = run.result
    assert [row["round"] for row in res.rounds] == list(range(1, ROUNDS + 1))
    assert [row["clients"] for row in res.rounds] == [CLIENTS - 1] * ROUNDS
    assert set(run.counts()) == {1000, 1002}
    # every message to node 1001 came back as an error; the others never did
    for mtype, node, reply in run.replies:
        assert reply.has_error() == (node == 1001), (mtype, node)
    assert len(res.rejected) == ROUNDS
    for rnd, text in enumerate(res.rejected, start=1):
        assert "1001" in text and f"round {rnd}" in text and "DataError" in text, text
    assert any("disk unreadable" in r.getMessage() for r in caplog.records)
    assert res.final["clients"] == CLIENTS - 1
    finite_mf1(run)


# ---------------------------------------------------------------- (b) min_clients


def test_min_clients_skips_rounds_and_keeps_master_weights(caplog):
    key = (f"fed.min_clients={CLIENTS + 1}",)
    with caplog.at_level(logging.WARNING, logger="server.fed.rounds"):
        run = _CACHE[key] = federation(*key)
    res = run.result
    assert res.rounds == [] and res.evals == []
    assert sum("round skipped" in r.getMessage() for r in caplog.records) == ROUNDS
    # the weights sent in round 1 are the cloud's weights at the end: nothing was applied
    first = [r for t, _, r in run.requests if t == "train"][0].content
    sent = {**from_record(first[wire.STUDENT]),
            **{f"d_f.{k}": v for k, v in from_record(first[wire.D_F]).items()},
            **{f"d_d.{k}": v for k, v in from_record(first[wire.D_D]).items()}}
    params = {n for n, _ in run.result.cloud.nets.named_parameters()}
    final = cloud_state(run)
    assert set(sent) == set(final)
    for k, v in final.items():
        if k in params:
            assert torch.equal(v, sent[k]), k
    assert all(not opt.state for opt in res.cloud.opts.values())  # no optimizer ever stepped
    assert all(p.grad is None for p in res.cloud.nets.parameters())


def test_min_clients_skipped_rounds_keep_bn_buffers():
    run = cached(f"fed.min_clients={CLIENTS + 1}")
    first = [r for t, _, r in run.requests if t == "train"][0].content
    sent = from_record(first[wire.STUDENT])
    final = student_state(run.result.cloud.nets)
    for k, v in final.items():
        assert torch.equal(v, sent[k]), k


# ---------------------------------------------------------------- (c) BN policies


def _nbt(run: Run) -> set[int]:
    return {int(b) for k, b in run.result.cloud.nets.student.named_buffers()
            if k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("policy", ["averaged", "local", "reestimate"])
def test_bn_policy_runs(policy):
    run = cached(f"fed.bn_policy={policy}")
    finite_mf1(run)
    assert [row["clients"] for row in run.result.rounds] == [CLIENTS] * ROUNDS
    assert run.result.rejected == []
    # "local" keeps each node's BN statistics on the node
    for ctx in run.grid.contexts.values():
        assert ("bn-local" in ctx.state) == (policy == "local")


def test_bn_local_cloud_buffers_move_only_with_the_source_side():
    averaged, local = cached("fed.bn_policy=averaged"), cached("fed.bn_policy=local")
    a, b = student_state(averaged.result.cloud.nets), student_state(local.result.cloud.nets)
    bufs = [k for k, _ in averaged.result.cloud.nets.student.named_buffers()]
    assert any(not torch.equal(a[f"student.{k}"], b[f"student.{k}"]) for k in bufs)
    # one source forward per round; "averaged" also composes the target passes of each round
    hp = KDHparams.from_config(averaged.result.cloud.cfg.distill)
    assert _nbt(local) == {ROUNDS}
    assert _nbt(averaged) == {(1 + target_passes(hp)) * ROUNDS}


# ---------------------------------------------------------------- (d) teacher placement


def _teacher_sends(run: Run) -> Counter:
    return Counter(node for _, node, req in run.requests if wire.TEACHER in req.content)


def test_teacher_in_cloud_never_travels():
    run = cached("fed.teacher_placement=cloud")
    finite_mf1(run)
    assert _teacher_sends(run) == Counter()
    assert any(t == "train.teacher" for t, _, _ in run.requests)  # federated DANN pre-training
    for node, reply in run.of("train"):
        keys = set(reply.content[wire.METRICS].keys())
        # the default cross KD in expectation needs only the cloud's scalar, so "kd" stays
        assert "hint" not in keys and "kd" in keys, (node, keys)
        assert {"dom", "d_f", "w_mean"} <= keys
    assert all(rc == "" for rc in (req.content[wire.CONFIG]["teacher_hash"]
                                   for t, _, req in run.requests if t == "train"))
    assert not any("trg_hint" in row for row in run.result.rounds)


def test_cloud_hint_prototypes_restore_the_edges_hint_without_the_teacher():
    run = cached("fed.teacher_placement=cloud", "fed.cloud_hint=prototypes")
    finite_mf1(run)
    assert _teacher_sends(run) == Counter()  # still: the teacher never leaves the cloud
    cloud = run.result.cloud
    train = [req for t, _, req in run.requests if t == "train"]
    assert train and all(wire.HINT_PROTOTYPES in req.content for req in train)
    protos = from_record(train[0].content[wire.HINT_PROTOTYPES])["feat"]
    classes = cloud.source.spec.classes
    assert tuple(protos.shape) == (classes, 128)
    feat, y = cloud.t_src.feat, cloud.source.train.y  # source-side statistics only
    for c in range(classes):
        assert torch.allclose(protos[c], feat[y == c].mean(0))
    for _, reply in run.of("train"):  # the same upward manifest: one more mean scalar
        assert "hint" in reply.content[wire.METRICS].keys()
    assert all(row["trg_hint"] > 0 for row in run.result.rounds)
    plain = cached("fed.teacher_placement=cloud")
    assert not any(wire.HINT_PROTOTYPES in req.content for _, _, req in plain.requests)


def test_cloud_hint_needs_the_cloud_placement():
    with pytest.raises(UnikdError, match="fed.cloud_hint=prototypes.*fed.teacher_placement=edge"):
        federation("fed.teacher_placement=edge", "fed.cloud_hint=prototypes")


def test_teacher_on_edge_is_sent_once_per_node():
    run = cached("fed.teacher_placement=edge")
    finite_mf1(run)
    assert _teacher_sends(run) == Counter({n: 1 for n in run.grid.node_ids})
    firsts = {node for t, node, req in run.requests
              if wire.TEACHER in req.content and t == "train"
              and req.content[wire.CONFIG]["round"] == 1}
    assert firsts == set(run.grid.node_ids)
    for _, reply in run.of("train"):
        assert {"kd", "hint"} <= set(reply.content[wire.METRICS].keys())
    # later rounds run on the node's cached teacher outputs
    assert all("teacher-out" in ctx.state for ctx in run.grid.contexts.values())


def test_source_only_teacher_runs():
    run = cached()
    finite_mf1(run)
    assert not any(t == "train.teacher" for t, _, _ in run.requests)
    assert _teacher_sends(run) == Counter({n: 1 for n in run.grid.node_ids})


# ---------------------------------------------------------------- (e) partitions


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.5"])
def test_partition_counts_cover_the_target_train_split(partition):
    run = cached() if partition == "iid" else cached(f"fed.partition={partition}")
    finite_mf1(run)
    counts = run.counts()
    n_trg = len(load_scenario(run.cfg.data).trg_train)
    assert len(counts) == CLIENTS and all(c > 0 for c in counts.values())
    assert sum(counts.values()) == n_trg
    for node, reply in run.of("train"):  # every train reply reports the same count
        assert reply.content[wire.METRICS]["num-examples"] == counts[node]


def test_dirichlet_is_not_iid():
    assert cached("fed.partition=dirichlet:0.5").counts() != cached().counts()


def test_per_domain_partition():
    run = cached("fed.partition=per-domain", "data.scenario=0->1,2,3")
    finite_mf1(run)
    counts = run.counts()
    spec = resolve_spec(run.cfg.data)
    sizes = [len(load_split(run.cfg.data, spec, "train", d)) for d in ("1", "2", "3")]
    assert [counts[1000 + i] for i in range(CLIENTS)] == sizes
    tests = [len(load_split(run.cfg.data, spec, "test", d)) for d in ("1", "2", "3")]
    assert run.result.final["num-examples"] == sum(tests)


# ---------------------------------------------------------------- (f) determinism


def test_same_config_twice_is_identical():
    first, again = cached(), federation()
    assert finite_mf1(again) == finite_mf1(first)
    a, b = cloud_state(first), cloud_state(again)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa
    assert strip(first.result.rounds) == strip(again.result.rounds)


# ---------------------------------------------------------------- (g) local steps


def test_local_steps_three_differs_from_one():
    one, three = cached(), cached("fed.local_steps=3")
    finite_mf1(three)
    for _, reply in three.of("train"):
        assert reply.content[wire.METRICS]["local-steps"] == 3
    for _, reply in one.of("train"):
        assert reply.content[wire.METRICS]["local-steps"] == 1
    a, b = cloud_state(one), cloud_state(three)
    params = {n for n, _ in one.result.cloud.nets.named_parameters()}
    assert any(not torch.equal(a[k], b[k]) for k in params)
    # the first round starts from the same weights, so only the client gradients differ
    g1 = [r.content[wire.STUDENT_GRAD] for _, r in one.of("train")][0]
    g3 = [r.content[wire.STUDENT_GRAD] for _, r in three.of("train")][0]
    assert any(not torch.equal(x, from_record(g3)[k]) for k, x in from_record(g1).items())


# ---------------------------------------------------------------- (h) bytes on the wire


def test_bytes_per_client_per_round_under_200kb():
    run = cached("fed.teacher_placement=edge")
    spec = run.result.cloud.source.spec
    assert (spec.channels, spec.length, spec.classes) == (9, 128, 6)  # HAR-shaped models
    teacher = defaultdict(int)  # the once-per-node teacher snapshot, by round
    for row in run.result.ledger.rows:
        if row["record"] == wire.TEACHER:
            teacher[row["round"]] += row["bytes"]
    assert set(teacher) == {1}
    assert len(run.result.rounds) == ROUNDS
    for row in run.result.rounds:
        assert 0 < row["bytes_up_per_client"] < 200_000, row
        down = row["bytes_down_per_client"] - teacher[row["round"]] / CLIENTS
        assert 0 < down < 200_000, row
        if row["round"] > 1:
            assert row["bytes_down_per_client"] < 200_000, row


def test_a_node_keeps_its_windows_across_teacher_members_and_the_student_phase():
    """Federated DANN member k >= 1 runs with its own seed; the simulator must still give each
    node the windows the run's seed decides (a device's data does not change between phases),
    or the simulation and a deployment of the same run part ways."""
    from client.node.local_data import local_data
    from shared.data.loaders import Normalizer
    from shared.protocol.records import SetupConfig, SimSetup

    run = federation("fed.teacher_placement=edge", "teacher.ensemble=2")

    def windows(req, node):
        c = req.content
        stats = from_record(c[wire.NORM])
        data = local_data(SetupConfig.from_record(c[wire.CONFIG]),
                          SimSetup.from_record(c[wire.SIM]), {}, run.grid.node_ids.index(node),
                          Normalizer(stats["mean"], stats["std"]))
        return data.x_train

    member_seeds = {int(req.content[wire.CONFIG]["seed"]) for t, _, req in run.requests
                    if t == "train.teacher"}
    assert len(member_seeds) == 2  # two members, two seeds: the case that used to diverge
    for node in run.grid.node_ids:
        seen = [windows(req, n) for t, n, req in run.requests
                if n == node and t in ("train.teacher", "train")]
        assert len(seen) > 2 and all(torch.equal(x, seen[0]) for x in seen), node


def test_a_malformed_prototype_record_is_an_error_naming_it():
    from flwr.app import RecordDict

    from shared.data.datasets import get_spec
    from shared.protocol.records import spec_to_record, to_record

    spec = get_spec("SYNTH")
    for bad in (torch.zeros(spec.classes, 64), torch.zeros(spec.classes + 1, 128),
                torch.full((spec.classes, 128), float("nan"))):
        content = RecordDict({wire.SPEC: spec_to_record(spec),
                              wire.HINT_PROTOTYPES: to_record({"feat": bad})})
        with pytest.raises(UnikdError, match="hint.prototypes"):
            client_app.hint_prototypes(content)
    good = RecordDict({wire.SPEC: spec_to_record(spec),
                       wire.HINT_PROTOTYPES: to_record({"feat": torch.ones(spec.classes, 128)})})
    assert client_app.hint_prototypes(good).shape == (spec.classes, 128)


# ---------------------------------------------------------------- the reported student's EMA


def test_with_the_ema_the_evaluation_and_the_run_folder_hold_the_average(tmp_path):
    """`distill.ema_decay` on: the evaluation message, `final.pt`'s student and `results.json`
    are the EMA's; the live weights travel in training rounds and sit beside it as
    `live_student`."""
    import json

    from server.fed.run_folder import write_fed_run
    from shared.protocol import checkpoints

    run = federation("distill.ema_decay=0.5")
    cloud = run.result.cloud
    ema, live = student_state(cloud.reported_nets()), student_state(cloud.nets)
    evaluated = from_record([r for t, _, r in run.requests if t == "evaluate"][-1]
                            .content[wire.STUDENT])  # after the last round: the final EMA
    assert all(torch.equal(evaluated[k], ema[k]) for k in ema)
    assert not all(torch.equal(evaluated[k], live[k]) for k in live)
    summary = write_fed_run(tmp_path, run.cfg, run.result)
    final = checkpoints.load(tmp_path / "checkpoints" / "final.pt", checkpoints.FED_FINAL)
    assert all(torch.equal(final["student"][k], ema[k]) for k in ema)
    assert all(torch.equal(final["live_student"][k], live[k]) for k in live)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mf1"] == summary["mf1"] == run.result.evals[-1]["mf1"]
