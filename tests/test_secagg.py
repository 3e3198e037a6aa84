"""Secure aggregation on the Message API (issue 13): the cloud learns only the round's sum.

The protocol runs through the in-process Grid (Flower's serialisation both ways) with a small
ClientApp whose `train` handler advertises a known synthetic update, so every sum can be checked
against the plain one. The last tests run whole federations with the real edge ClientApp:
plain, record-level DP with a node dropping after sharing its keys (checked against the plain
record-DP updates and the epsilon ledger), and client-level DP with distributed noise shares
(the noise in the unmasked sum measured against the central mechanism's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node import secagg
from server.fed.harness import InProcessGrid
from server.fed.secagg import layout_of, secure_round
from shared.protocol import wire
from shared.protocol.records import RoundConfig
from shared.unikd.settings import KDHparams, StepSchedule
from shared.privacy.secagg_math import SecAggError, decode, flatten, threshold_for

CLIP, BITS = 4.0, 24
SHAPES = {wire.STUDENT_GRAD: {"student.w": (40,), "adapter.b": (6,)},
          wire.D_F_GRAD: {"net.0.weight": (3, 5)}, wire.D_D_GRAD: {"net.0.bias": (4,)}}

app = ClientApp()


def synthetic(cid: int) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + cid)
    out = {"student": {}, "d_f": {}, "d_d": {}}
    for rec, group in ((wire.STUDENT_GRAD, "student"), (wire.D_F_GRAD, "d_f"),
                       (wire.D_D_GRAD, "d_d")):
        for name, shape in SHAPES[rec].items():
            out[group][name] = torch.randn(shape, generator=g) * 0.3
    return out


@app.train()
def train(msg: Message, context: Context) -> Message:
    rc = RoundConfig.from_record(msg.content[wire.CONFIG])
    cid = int(context.node_config["partition-id"])
    reply = secagg.advertise(context.state, rc, cid, synthetic(cid))
    reply[wire.METRICS] = MetricRecord({"client-id": cid, "round": rc.round})
    wire.check_outgoing(reply, wire.expected_secagg_shapes(wire.SECAGG_KEYS), wire.SECAGG_METRICS)
    return Message(reply, reply_to=msg)


secagg.add_stage_handlers(app)


def _rc(rnd: int = 1) -> RoundConfig:
    return RoundConfig(round=rnd, epoch=1, step=0, global_step=rnd - 1,
                       schedule=StepSchedule(beta=0.1, alpha=0.0), lr=1e-3, local_steps=1,
                       seed=0, batch_size=8, hparams=KDHparams(detach_weights=True),
                       bn_policy="averaged", dataset="SYNTH", secagg=True, secagg_clip=CLIP,
                       secagg_bits=BITS)


def _run(n: int, drop: dict[str, set[int]] | None = None, fraction: float = 0.6, taps=None,
         grids: list | None = None):
    """One secure round over n nodes; `drop` maps a message type to client ids that vanish."""
    grid = InProcessGrid(app, n, tap=(lambda q, r: taps.append((q, r))) if taps is not None
                         else None)
    nodes = sorted(grid.get_node_ids())
    drop = drop or {}
    if grids is not None:
        grids.append(grid)

    def send(contents, mtype, rnd):
        keep = [m for m in sorted(contents) if m - 1000 not in drop.get(mtype, set())]
        msgs = [Message(contents[m], dst_node_id=m, message_type=mtype, group_id=str(rnd))
                for m in keep]
        return list(grid.send_and_receive(msgs))

    content = RecordDict({wire.CONFIG: _rc().to_record()})
    return secure_round(send, nodes, {m: content for m in nodes}, 1, fraction, CLIP, BITS, SHAPES)


def _plain_mean(clients: list[int]) -> np.ndarray:
    return np.mean([secagg.update_vector(synthetic(c)) for c in clients], axis=0)


def _vec(update) -> np.ndarray:
    v, _ = flatten({k: update.arrays[k] for k in wire.GRAD_KEYS})
    return v


def test_unmasked_sum_equals_the_plain_sum_up_to_quantisation():
    update, _, stats = _run(4)
    assert stats["secagg_u2"] == 4 and update.num_examples == 4
    err = np.abs(_vec(update) - _plain_mean(range(4))).max()
    assert err <= CLIP / 2**BITS  # rounding of each of the 4 terms, averaged
    assert update.arrays[wire.STUDENT_BN] == {}  # no BN statistics under secure aggregation
    assert [k for k, _, _ in layout_of(SHAPES)][0] == wire.D_D_GRAD  # sorted flattening order


def test_a_single_masked_update_looks_uniform_and_does_not_decode():
    taps: list = []
    _run(3, taps=taps)
    masked = [r.content[wire.SECAGG_MASKED]["y"].numpy() for q, r in taps
              if q.metadata.message_type == wire.SECAGG_MASK_TYPE]
    assert len(masked) == 3
    y = masked[0]
    bits = np.unpackbits(y.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.03  # every bit of Z_{2^64} is a fair coin
    top = (y >> np.uint64(60)).astype(int)  # top nibble: uniform over 16 values
    assert len(set(top.tolist())) >= 12
    alone = decode(y, CLIP, BITS)
    assert np.abs(alone - _plain_mean([0])).min() > 1.0  # nowhere near the true update
    pair = decode(masked[0] + masked[1], CLIP, BITS)  # two of three: still masked
    assert np.abs(pair - 2 * _plain_mean([0, 1])).min() > 1.0
    # no train reply carries a gradient; every reply passed the wire manifest on the node
    for q, r in taps:
        assert not set(r.content.keys()) & set(wire.GRAD_KEYS)


def test_thirty_percent_dropout_after_sharing_still_gives_the_survivors_sum():
    update, _, stats = _run(10, drop={wire.SECAGG_MASK_TYPE: {2, 5, 7}})
    assert threshold_for(10, 0.6) == 6 and stats["secagg_dropped"] == 3
    survivors = [c for c in range(10) if c not in (2, 5, 7)]
    err = np.abs(_vec(update) - _plain_mean(survivors)).max()
    assert err <= CLIP / 2**BITS


def test_below_the_threshold_the_round_is_skipped_cleanly():
    update, _, stats = _run(10, drop={wire.SECAGG_MASK_TYPE: {0, 1, 2, 3, 4}})
    assert update is None and "threshold 6" in stats["secagg_skipped"]
    update, _, stats = _run(5, drop={"train": {0, 1, 2, 3}})
    assert update is None and "needs >= 2" in stats["secagg_skipped"]


def test_nodes_refuse_overlapping_sets_and_a_second_unmasking():
    grids: list = []
    update, _, stats = _run(3, drop={wire.SECAGG_UNMASK_TYPE: {0, 1, 2}}, grids=grids)
    assert update is None and "unmasking replies" in stats["secagg_skipped"]
    grid = grids[0]
    node = sorted(grid.get_node_ids())
    ctx = grid.contexts[node[0]]

    def ask(survivors, dropped):
        content = RecordDict({wire.SECAGG_CONFIG: ConfigRecord(
            {"round": 1, "survivors": survivors, "dropped": dropped})})
        return secagg.handle_unmask(Message(content, dst_node_id=node[0],
                                            message_type=wire.SECAGG_UNMASK_TYPE),
                                    ctx.state, node[0])

    with pytest.raises(SecAggError, match="overlap"):
        ask(node, [node[2]])
    with pytest.raises(SecAggError, match="partition"):
        ask(node[:2], [])
    reply = ask(node[:2], [node[2]])  # b-shares of the survivors, sk-share of the dropped one
    assert set(reply.content[wire.SECAGG_UNMASK].keys()) == {f"b.{node[0]}", f"b.{node[1]}",
                                                             f"sk.{node[2]}"}
    with pytest.raises(SecAggError, match="already"):
        ask(node, [])


def test_federation_with_secure_aggregation(tmp_path):
    """The real edge ClientApp without DP; DP with SecAgg is below (record DP, distributed
    noise), each checked against the plain path's updates."""
    from server.fed.harness import load_component
    from server.fed.rounds import federate
    from shared.config import load_config

    cfg = load_config(overrides=["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128",
                                 "fed.clients=3", "fed.rounds=2",
                                 "fed.teacher_placement=source-only",
                                 "fed.secure_aggregation=true"])
    taps: list = []
    grid = InProcessGrid(load_component("client.node.client_app:app"), 3,
                         tap=lambda q, r: taps.append((q.metadata.message_type, r)))
    result = federate(grid, cfg, progress=False)
    assert len(result.rounds) == 2 and result.rounds[-1]["secagg_u2"] == 3
    assert "mf1" in result.final
    for mtype, r in taps:
        if mtype.startswith("train"):
            assert not set(r.content.keys()) & {*wire.GRAD_KEYS, wire.STUDENT_BN}


# ---------------------------------------------------------------- record DP + SecAgg, end to end


class _DropAtMask:
    """A FaultPlan-like plan: `node` vanishes after sharing its keys (it never gets the mask
    request) in the rounds listed; nothing else is disturbed."""

    message_types = (wire.SECAGG_MASK_TYPE,)

    def __init__(self, node: int, rounds: set[int]):
        self.node, self.rounds = node, rounds

    def draw(self, rnd: int, node: int) -> str | None:
        return "dropout" if node == self.node and rnd in self.rounds else None


def _federation(tmp_path, monkeypatch, overrides: list[str], faults=None):
    """run_federate (run folder) with every (type, reply) tapped and the secure sums captured."""
    import server.fed.rounds as rounds_mod
    import server.fed.run as run_mod
    from shared.config import load_config

    taps: list = []
    sums: dict[int, object] = {}
    from server.fed.secagg import secure_updates as real_secure

    real_grid = InProcessGrid  # the harness's own class (run_mod's may be patched already)

    def grid(app, n, **kw):
        return real_grid(app, n, faults=faults,
                         tap=lambda q, r: taps.append((q.metadata.message_type, q, r)), **kw)

    def secure(send, nodes, contents, rnd, fed, shapes, *with_w):
        out = real_secure(send, nodes, contents, rnd, fed, shapes, *with_w)
        if out[0]:
            sums[rnd] = out[0][0]
        return out

    monkeypatch.setattr(run_mod, "InProcessGrid", grid)
    monkeypatch.setattr(rounds_mod, "secure_updates", secure)
    from server.fed.run import run_federate

    # fed.workers=1: the sequential grid, the one patched above
    cfg = load_config(overrides=[*overrides, "fed.workers=1", f"out={tmp_path}"])
    return run_federate(cfg, progress=False), taps, sums


def _reply_vec(reply) -> np.ndarray:
    from shared.protocol.records import from_record

    v, _ = flatten({k: from_record(reply.content[k]) for k in wire.GRAD_KEYS})
    return v


def _distributed_run(tmp_path, monkeypatch, overrides: list[str]):
    """A secure federation whose node 3 drops after sharing its keys in round 1 (so |U2| = t = 3
    there), with what every distributed-noise run must show: both rounds above the threshold,
    labelled distributed, and no update or BN statistic reaching the cloud.
    Returns (run folder, taps, secure sums by round, rounds.csv rows)."""
    import csv

    run_dir, taps, sums = _federation(tmp_path, monkeypatch,
                                      [*overrides, "fed.secure_aggregation=true"],
                                      faults=_DropAtMask(1003, {1}))
    rounds = list(csv.DictReader((run_dir / "rounds.csv").open()))
    assert [(r["secagg_threshold"], r["secagg_u2"]) for r in rounds] == [("3", "3"), ("3", "4")]
    assert all(r["dp_noise"].startswith("distributed") for r in rounds)
    for mtype, q, r in taps:
        assert not set(r.content.keys()) & {*wire.GRAD_KEYS, wire.STUDENT_BN}, mtype
    return run_dir, taps, sums, rounds


def _assert_gaussian_noise(noise: np.ndarray, want_std: float) -> None:
    """Centred noise of std `want_std` (within 3%) over a model-sized vector."""
    assert len(noise) > 30_000 and abs(noise.mean()) < 4 * want_std / np.sqrt(len(noise))
    assert noise.std() == pytest.approx(want_std, rel=0.03)


def _round_one_updates(taps) -> dict[int, np.ndarray]:
    """Plain run: each client's round-1 update vector as it left the node."""
    return {int(r.content[wire.METRICS]["client-id"]): _reply_vec(r) for t, q, r in taps
            if t == "train" and int(r.content[wire.METRICS]["round"]) == 1}


E2E = ["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128", "fed.clients=4",
       "fed.rounds=2", "fed.teacher_placement=source-only",
       "fed.local_steps_mode=edge", "fed.local_steps=1"]  # noise shares need one local step


def test_record_dp_with_secure_aggregation_and_a_dropout_end_to_end(tmp_path, monkeypatch):
    """Record-level DP + SecAgg in the in-process federation, node 3 dropping after sharing its
    keys in round 1: the ledger covers every asked node, the cloud only ever holds masked
    vectors, and the unmasked sum is the survivors' plain record-DP updates (clipped to
    fed.secagg_clip, uniform mean) up to quantisation."""
    import csv
    import json

    from shared.privacy.secagg_math import clip_and_check

    # target KD on the edge's own windows: the update is the gradients alone (the expected
    # cross KD's w coordinate inside it: tests/test_private_w.py)
    dp = ["fed.dp=record", "fed.dp_epsilon=8", "distill.target_kd=true"]
    plain_dir, plain_taps, _ = _federation(tmp_path / "plain", monkeypatch, [*E2E, *dp])
    run_dir, taps, sums = _federation(tmp_path / "secure", monkeypatch,
                                      [*E2E, *dp, "fed.secure_aggregation=true"],
                                      faults=_DropAtMask(1003, {1}))
    # the epsilon ledger: every node charged every round it was asked (the dropped one too)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dp"] == "record" and 0 < results["epsilon"] <= 8.0 + 1e-3
    assert results["delta"] == 1e-5 and results["rounds"] == 2
    rows = list(csv.DictReader((run_dir / "privacy_ledger.csv").open()))
    assert {(r["round"], r["client"]) for r in rows} == {(str(rn), str(c)) for rn in (1, 2)
                                                         for c in range(4)}
    assert max(float(r["epsilon"]) for r in rows) == pytest.approx(results["epsilon"])
    plain_rows = list(csv.DictReader((plain_dir / "privacy_ledger.csv").open()))
    assert [r["epsilon"] for r in rows] == [r["epsilon"] for r in plain_rows]  # same spend
    rounds = list(csv.DictReader((run_dir / "rounds.csv").open()))
    assert [(r["secagg_u1"], r["secagg_u2"], r["secagg_dropped"]) for r in rounds] == \
        [("4", "3", "1"), ("4", "4", "0")]
    # the cloud saw keys, ciphertexts, masked vectors and shares: never an update
    plain = _round_one_updates(plain_taps)
    assert sorted(plain) == [0, 1, 2, 3]
    masked = {}
    for mtype, q, r in taps:
        assert not r.has_error(), (mtype, r.error.reason)
        assert not set(r.content.keys()) & {*wire.GRAD_KEYS, wire.STUDENT_BN}, mtype
        if mtype.startswith("train"):  # no loss, no w_mean; evaluation sends confusion counts
            assert set(r.content[wire.METRICS].keys()) <= {"client-id", "round"}, mtype
        if mtype == wire.SECAGG_MASK_TYPE and r.content[wire.METRICS]["round"] == 1:
            masked[int(r.content[wire.METRICS]["client-id"])] = \
                r.content[wire.SECAGG_MASKED]["y"].numpy()
    assert sorted(masked) == [0, 1, 2]  # node 3 never sent a masked input in round 1
    clip, bits = 8.0, 24
    for cid, y in masked.items():
        assert abs(np.unpackbits(y.view(np.uint8)).mean() - 0.5) < 0.01  # uniform-looking
        assert np.abs(decode(y, clip, bits) - plain[cid]).min() > 1.0  # decodes to nothing
    # the unmasked round-1 sum: the survivors' plain record-DP updates, clipped, uniform mean
    want = np.mean([clip_and_check(plain[c], clip)[0] for c in (0, 1, 2)], axis=0)
    got = _vec(sums[1])
    assert sums[1].num_examples == 3 and got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= clip / 2**bits + 1e-6 * np.abs(want).max(), err  # rounding (+ float32)
    assert np.abs(want).max() > 1000 * err  # a real update, not a vanishing one


def test_distributed_noise_with_a_dropout_carries_at_least_the_central_noise(tmp_path,
                                                                               monkeypatch):
    """fed.dp=central + SecAgg: each node adds N(0, (zC)^2 / t); with node 3 dropped after
    sharing (|U2| = t = 3) the unmasked mean minus the plain clipped mean is noise of std
    sqrt(|U2| / t) z C / |U2| = z C / |U2|, the central mechanism's, and the ledger charges it."""
    import json

    from shared.privacy.secagg_math import clip_and_check

    dp = ["fed.dp=central", "fed.dp_epsilon=8", "fed.dp_clip=0.5"]
    _, plain_taps, _ = _federation(tmp_path / "plain", monkeypatch, [*E2E, *dp])
    run_dir, taps, sums, rounds = _distributed_run(tmp_path / "secure", monkeypatch, [*E2E, *dp])
    z = float(rounds[0]["dp_noise_multiplier"])
    eps = [float(r["dp_epsilon"]) for r in rounds]
    assert eps[0] < eps[1] <= 8.0 * 1.001  # both rounds charged as the central Gaussian
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epsilon"] == pytest.approx(eps[-1]) and results["delta"] == 1e-5
    plain = _round_one_updates(plain_taps)  # central: the raw updates (the cloud clips them)
    clean = np.mean([clip_and_check(plain[c], 0.5)[0] for c in (0, 1, 2)], axis=0)
    noise = _vec(sums[1]) - clean
    _assert_gaussian_noise(noise, z * 0.5 / 3)  # sqrt(3/3) z C / 3: the central mechanism's


def test_local_dp_updates_are_masked_as_sent_not_reclipped_to_the_dp_clip(tmp_path,
                                                                            monkeypatch):
    """fed.dp=local + SecAgg: a node's update is already clipped to dp_clip and noised; its
    norm is mostly noise (~2 z C sqrt(d)). Masking clips to fed.secagg_clip (a range bound),
    so the unmasked mean is the mean of the local-DP updates as the plain path sends them.
    (Clipping them to dp_clip again shrank each by ~2 z sqrt(d), hundreds of times.)"""
    from shared.privacy.secagg_math import clip_and_check

    dp = ["fed.dp=local", "fed.dp_epsilon=8", "fed.dp_clip=1.0", "fed.secagg_clip=2000"]
    _, plain_taps, _ = _federation(tmp_path / "plain", monkeypatch, [*E2E, *dp])
    _, taps, sums = _federation(tmp_path / "secure", monkeypatch,
                                [*E2E, *dp, "fed.secure_aggregation=true"],
                                faults=_DropAtMask(1001, {1}))
    rc = next(q.content[wire.CONFIG] for t, q, _ in taps if t == "train")
    assert rc["secagg_clip"] == 2000.0 and rc["dp_clip"] == 1.0
    plain = _round_one_updates(plain_taps)
    norms = {c: float(np.linalg.norm(v)) for c, v in plain.items()}
    assert all(50 < n < 2000 for n in norms.values()), norms  # noise-dominated, within range
    want = np.mean([clip_and_check(plain[c], 2000.0)[0] for c in (0, 2, 3)], axis=0)
    got = _vec(sums[1])
    err = np.abs(got - want).max()
    assert err <= 2000.0 / 2**25 + 1e-6 * np.abs(want).max(), err


def test_record_dp_noise_shares_leave_the_full_noise_only_in_the_sum(tmp_path, monkeypatch):
    """fed.dp=record + SecAgg + fed.record_noise=shares: each node masks its un-noised DP-SGD
    step (clipped window gradients summed, divided by B) plus N(0, (zC/B)^2 / t). With node 3
    dropped after sharing (|U2| = t = 3), the unmasked mean minus the survivors' clean steps is
    noise of std sqrt(3/3) (zC/B) / 3: one DP-SGD step's noise on the sum, as the ledger (the
    same as full per-node noise) charges it."""
    import csv

    from shared.privacy.secagg_math import clip_and_check

    clean: dict[tuple[int, int], np.ndarray] = {}
    real_advertise = secagg.advertise

    def spy(state, rc, cid, grads):
        clean[(rc.round, cid)] = secagg.update_vector(grads)
        return real_advertise(state, rc, cid, grads)

    monkeypatch.setattr(secagg, "advertise", spy)
    # the gradients alone, with the fixes-on schedules the size check below was set on (the
    # ramped GRL keeps the un-noised step small against the noise)
    dp = ["fed.dp=record", "fed.dp_epsilon=8", "distill.target_kd=true", "distill.grl_ramp=true",
          "distill.beta_natural_log=true", "distill.double_target_forward=false"]
    full_dir, _, _ = _federation(tmp_path / "full", monkeypatch,
                                 [*E2E, *dp, "fed.secure_aggregation=true"],
                                 faults=_DropAtMask(1003, {1}))
    full_round_one = {c: v for (r, c), v in clean.items() if r == 1}
    clean.clear()
    run_dir, taps, sums, _ = _distributed_run(tmp_path / "shares", monkeypatch,
                                              [*E2E, *dp, "fed.record_noise=shares"])
    ledger = [r["epsilon"] for r in csv.DictReader((run_dir / "privacy_ledger.csv").open())]
    assert ledger == [r["epsilon"] for r in csv.DictReader(
        (full_dir / "privacy_ledger.csv").open())]  # the same z, the same spend
    rc = RoundConfig.from_record(next(q.content[wire.CONFIG] for t, q, _ in taps
                                      if t == "train"))
    assert rc.dp_shares and rc.dp_noise > 0
    steps = {c: clip_and_check(clean[(1, c)], rc.secagg_clip)[0] for c in (0, 1, 2)}
    # a masked step is un-noised before its share: far smaller than a full-noise step
    noise_norm = rc.dp_noise * rc.dp_clip / rc.batch_size * np.sqrt(len(steps[0]))
    assert all(np.linalg.norm(v) < noise_norm / 5 for v in steps.values())
    assert all(np.linalg.norm(full_round_one[c]) > noise_norm / 2 for c in (0, 1, 2))
    noise = _vec(sums[1]) - np.mean(list(steps.values()), axis=0)
    _assert_gaussian_noise(noise, rc.dp_noise * rc.dp_clip / rc.batch_size / 3)


@pytest.mark.parametrize("sets, wrong", [
    (["fed.dp=record"], "fed.secure_aggregation=False"),
    (["fed.dp=central", "fed.secure_aggregation=true"], "fed.dp=central"),
    (["fed.dp=record", "fed.secure_aggregation=true", "fed.local_steps=2"], "fed.local_steps=2"),
])
def test_record_noise_shares_is_refused_where_it_would_not_hold(sets, wrong):
    from server.fed.dp.federation import check_record_noise
    from shared.config import load_config
    from shared.errors import UnikdError

    cfg = load_config(overrides=[*sets, "fed.record_noise=shares"])
    with pytest.raises(UnikdError, match=f"fed.record_noise=shares.*{wrong}"):
        check_record_noise(cfg)


@pytest.mark.parametrize("scope", ["joint", "per-network"])
def test_central_dp_nodes_clip_per_network_before_masking(scope):
    """fed.dp=central + SecAgg: the node does the central mechanism's clipping, so
    fed.dp_clip_scope reaches it: per-network bounds each network by C / sqrt(3) (the whole by
    C); joint scales the whole update by one factor."""
    rc = _rc(1)
    rc.dp_mode, rc.dp_clip, rc.dp_clip_scope, rc.secagg_clip = "central", 1.0, scope, 1.0
    grads = {"student": {"w": torch.full((30,), 0.01)}, "d_f": {"b": torch.full((5,), 0.01)},
             "d_d": {"c": torch.full((4,), 100.0)}}  # D_d alone is far over the bound
    state = RecordDict()
    secagg.advertise(state, rc, 0, grads)
    x = state[secagg.SECRETS]["x"].numpy()
    d_d, d_f, student = np.split(x, [4, 9])  # records in wire order: d_d, d_f, student
    norms = [float(np.linalg.norm(p)) for p in (student, d_f, d_d)]
    assert float(np.linalg.norm(x)) <= 1.0 + 1e-6
    if scope == "per-network":  # the small networks keep their gradients, D_d gets its share
        assert norms[0] == pytest.approx(0.01 * 30 ** 0.5, rel=1e-5)
        assert norms[2] == pytest.approx(1 / 3 ** 0.5, rel=1e-5)
    else:  # one scale for all: the student's gradient all but vanishes
        assert norms[0] < 0.01 * 0.01 * 30 ** 0.5 and norms[2] == pytest.approx(1.0, rel=1e-4)
