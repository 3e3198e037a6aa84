"""The cloud's round as a transaction (server/fed/cloud.py): begin_round keeps the weights the
clients receive and runs the source step at them; round_messages builds the messages once from
that; finish_round steps, abort_round moves nothing. No Grid: the cloud alone, on SYNTH.
"""

from __future__ import annotations

import copy

import pytest
import torch
from flwr.common.serde import recorddict_to_proto

from server.central.teacher import content_hash
from server.fed.cloud import Clock, Cloud, load_source
from shared.config import load_config
from shared.errors import UnikdError
from shared.protocol import wire
from shared.protocol.records import RoundConfig, from_record, student_state
from shared.unikd.models import teacher_for

NODES = [1000, 1001, 1002]
CROSS_KD = ["distill.target_kd=false", "distill.cross_kd=expected"]  # a source scalar per round


def make_cloud(*overrides: str) -> Cloud:
    cfg = load_config(overrides=["seed=5", *overrides])
    source = load_source(cfg)
    torch.manual_seed(0)
    teacher = teacher_for(source.spec).eval()  # untrained: only its shapes and outputs matter
    return Cloud(cfg, source, teacher, content_hash(teacher), Clock(8, 2))


def snapshot(cloud: Cloud) -> dict:
    """Everything a round may move: weights and BN buffers of every net, optimizer states."""
    return copy.deepcopy({"nets": cloud.nets.state_dict(),
                          "opts": {k: o.state_dict() for k, o in cloud.opts.items()}})


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def serialized(contents: dict) -> dict[int, bytes]:
    return {n: recorddict_to_proto(c).SerializeToString(deterministic=True)
            for n, c in contents.items()}


def test_a_skipped_round_leaves_weights_bn_and_optimizers_as_they_were():
    cloud = make_cloud()
    cloud.begin_round(1)
    cloud.finish_round([])  # a first step: the optimizers hold moments now
    before = snapshot(cloud)
    cloud.begin_round(2)
    assert not same(snapshot(cloud)["nets"], before["nets"])  # the source step moved BN
    cloud.abort_round()
    assert same(snapshot(cloud), before)
    assert all(p.grad is None for p in cloud.nets.parameters())
    assert cloud.current is None


def test_messages_carry_the_weights_before_the_source_step():
    cloud = make_cloud()
    sent = {k: v.clone() for k, v in student_state(cloud.nets).items()}
    params = {k: p.detach().clone() for k, p in cloud.nets.named_parameters()}
    opened = cloud.begin_round(1)
    moved = [k for k, v in student_state(cloud.nets).items() if not torch.equal(v, sent[k])]
    assert moved and all("running" in k or "num_batches" in k for k in moved)  # BN only
    assert all(torch.equal(p, params[k]) for k, p in cloud.nets.named_parameters())
    contents = cloud.round_messages(NODES, has_teacher={NODES[0]})  # both payloads
    for content in contents.values():
        got = from_record(content[wire.STUDENT])
        assert got.keys() == sent.keys()
        assert all(torch.equal(got[k], sent[k]) for k in sent)
    assert all(opened.weights[wire.STUDENT] is c[wire.STUDENT] for c in contents.values())


def test_no_message_record_changes_after_the_messages_are_built():
    cloud = make_cloud(*CROSS_KD)
    opened = cloud.begin_round(1)
    assert opened.cross_kd
    contents = cloud.round_messages(NODES, has_teacher={NODES[0]})
    built = serialized(contents)
    rc = RoundConfig.from_record(contents[NODES[1]][wire.CONFIG])
    assert rc.source_kd == opened.source["cross_kd"].item() != 0.0  # in it from the start
    assert rc.teacher_members == 1 and wire.TEACHER in contents[NODES[1]]
    assert wire.TEACHER not in contents[NODES[0]]  # holds the teacher: the plain payload
    cloud.finish_round([], target_w=0.5)
    cloud.begin_round(2)  # the next round moves the weights and BN again
    assert serialized(contents) == built
    cloud.abort_round()


def test_a_round_is_begun_once_and_closed_once():
    cloud = make_cloud()
    with pytest.raises(UnikdError, match="no round is open"):
        cloud.round_messages(NODES, set())
    cloud.begin_round(1)
    with pytest.raises(UnikdError, match="round 1 is open"):
        cloud.begin_round(2)
    cloud.abort_round()
    with pytest.raises(UnikdError, match="no round is open"):
        cloud.finish_round([])
    with pytest.raises(UnikdError, match="no round is open"):
        cloud.abort_round()


def test_with_the_ema_training_rounds_send_live_weights_and_evaluation_the_average():
    """`distill.ema_decay` on: each applied round folds the live student into the EMA; the
    nodes train from the live weights and evaluate the average; an aborted round adds nothing."""
    cloud = make_cloud("distill.ema_decay=0.5")
    off = make_cloud("distill.ema_decay=0")
    assert off.ema is None and off.reported_nets() is off.nets  # off: no EMA at all
    for rnd in (1, 2):
        cloud.begin_round(rnd)
        cloud.finish_round([])
    averaged = copy.deepcopy(cloud.ema.state_dict())
    assert int(averaged["n_averaged"]) == 2
    cloud.begin_round(3)
    cloud.abort_round()
    assert same(cloud.ema.state_dict(), averaged)  # nothing moved, the EMA included

    live = {k: v.clone() for k, v in student_state(cloud.nets).items()}  # begin_round moves BN
    ema = student_state(cloud.reported_nets())
    params = {k for k, _ in cloud.nets.named_parameters()}
    evaluated = from_record(cloud.eval_content(3)[wire.STUDENT])
    cloud.begin_round(3)
    sent = from_record(cloud.round_messages(NODES, set())[NODES[0]][wire.STUDENT])
    assert sent.keys() == evaluated.keys() == live.keys()
    assert all(torch.equal(sent[k], live[k]) for k in live)  # training: the live student
    for k in live:
        if k in params:  # the parameters: averaged for evaluation
            assert torch.equal(evaluated[k], ema[k]), k
            assert not torch.equal(sent[k], evaluated[k]), k
        elif k.endswith("num_batches_tracked"):  # a count: the live one in both
            assert torch.equal(evaluated[k], live[k]), k
        else:  # BN statistics: averaged too
            assert torch.equal(evaluated[k], ema[k]) and not torch.equal(evaluated[k], live[k]), k
