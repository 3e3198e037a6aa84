"""The privacy guarantee: nothing but parameter-shaped arrays and fixed scalars leaves a client.

A real (small) federation runs with a tap on the in-process Grid that records every client
reply as the transport delivers it. An independent checker, written here from the models
themselves and NOT from shared.protocol.wire, then inspects every reply. Separately, shared.protocol.wire's own
`check_outgoing` must refuse hand-made leaks, and a ClientApp whose reply would leak must answer
with an error instead.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

import client.node.client_app as client_app
from client.node.local_data import local_data
from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from shared.protocol import wire
from shared.config import load_config
from shared.data.loaders import Normalizer
from shared.data.datasets import get_spec
from shared.unikd.engine import UniKDNets
from shared.unikd.models import DomainDisc, teacher_for
from shared.protocol.records import SetupConfig, SimSetup, from_record, to_record

ROOT = Path(__file__).resolve().parents[1]

CLIENTS = 3
BASE = ["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128", f"fed.clients={CLIENTS}",
        "fed.rounds=2"]
SPEC = get_spec("SYNTH")

# ---------------------------------------------------------------- the independent checker
# Written out by hand: what each message type may send up, record by record and metric by metric.
UP_RECORDS = {
    "query": {"metrics"},
    "train": {"student.grad", "d_f.grad", "d_d.grad", "student.bn", "metrics"},
    "train.teacher": {"teacher.grad", "teacher-disc.grad", "teacher.bn", "metrics"},
    "evaluate": {"metrics"},
}
# Only under fed.dp or secure aggregation with the default expected cross KD (issue 25): the
# clients' mean confusion weight as one noised number, never per window.
OPTIONAL_RECORDS = {"train": {"target.w"}}
UP_METRICS = {
    "query": {"client-id", "round", "num-examples"},
    "train": {"client-id", "round", "num-examples", "local-steps", "loss", "kd", "hint", "dom",
              "adv", "d_f", "w_mean", "im", "pl", "pl_kept",
              "confusion"},  # a round that carries an evaluation (fed.evaluation=piggyback)
    "train.teacher": {"client-id", "round", "num-examples", "teacher-dann-dom"},
    "evaluate": {"client-id", "round", "num-examples", "confusion"},
}


def _model_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """Record -> {array name -> the shape of the parameter/buffer of that name in its model}."""
    nets = UniKDNets.for_spec(SPEC)
    teacher, disc = teacher_for(SPEC), DomainDisc(128, SPEC.d_d_hidden)

    def params(m, prefix=""):
        return {prefix + k: tuple(p.shape) for k, p in m.named_parameters()}

    def buffers(m, prefix=""):
        return {prefix + k: tuple(b.shape) for k, b in m.named_buffers()}

    return {
        "student.grad": {**params(nets.student, "student."), **params(nets.adapter, "adapter.")},
        "d_f.grad": params(nets.d_f),
        "d_d.grad": params(nets.d_d),
        "student.bn": buffers(nets.student, "student."),
        "teacher.grad": params(teacher),
        "teacher-disc.grad": params(disc),
        "teacher.bn": buffers(teacher),
        "target.w": {"w": (1,)},
    }


MODEL_SHAPES = _model_shapes()
ALL_MODEL_SHAPES = {s for rec in MODEL_SHAPES.values() for s in rec.values()}
BN_RECORDS = {"student.bn", "teacher.bn"}


def check_reply(mtype: str, content: RecordDict, n_train: int, n_test: int) -> None:
    """Assert one client reply carries nothing but what the hand-written manifest allows."""
    allowed = UP_RECORDS[mtype] | OPTIONAL_RECORDS.get(mtype, set())
    assert set(content.keys()) <= allowed, \
        f"{mtype}: records outside the manifest: {set(content.keys()) - allowed}"
    assert set(content.keys()) >= UP_RECORDS[mtype], f"{mtype}: incomplete reply"
    for key, record in content.items():
        assert not isinstance(record, ConfigRecord), f"{mtype}: ConfigRecord '{key}' went up"
        if key == "metrics":
            assert isinstance(record, MetricRecord), f"{mtype}: '{key}' is {type(record)}"
            _check_metrics(mtype, record, n_train, n_test)
            continue
        assert isinstance(record, ArrayRecord), f"{mtype}: '{key}' is {type(record)}"
        allowed = MODEL_SHAPES[key]
        members = {n.split(".", 1)[0] for n in record.keys()}
        if mtype == "train.teacher" and all(m.isdigit() for m in members):
            # fed.local_steps_mode=both: every ensemble member's arrays, "<member>.<name>"
            allowed = {f"{m}.{n}": shape for m in members for n, shape in allowed.items()}
        assert set(record.keys()) == set(allowed), f"{mtype}/{key}: names differ from the model"
        for name, arr in record.items():
            a = arr.numpy()
            shape = tuple(a.shape)
            assert shape == allowed[name], f"{mtype}/{key}/{name}: shape {shape} != {allowed[name]}"
            if n_train in shape or n_test in shape:  # a per-sample dimension, unless a model's
                assert shape in ALL_MODEL_SHAPES, f"{mtype}/{key}/{name}: per-sample {shape}"
            if name.endswith("num_batches_tracked"):
                assert key in BN_RECORDS and a.dtype == np.int64 and shape == ()
            else:
                assert a.dtype == np.float32, f"{mtype}/{key}/{name}: dtype {a.dtype}"
                assert np.isfinite(a).all()


def _check_metrics(mtype: str, record: MetricRecord, n_train: int, n_test: int) -> None:
    keys = set(record.keys())
    assert keys <= UP_METRICS[mtype], \
        f"{mtype}: metrics outside the manifest {keys - UP_METRICS[mtype]}"
    assert {"client-id", "round", "num-examples"} <= keys
    for name, value in record.items():
        if name == "confusion":
            assert mtype in ("evaluate", "train")
            assert isinstance(value, list) and len(value) == SPEC.classes ** 2
            assert all(isinstance(v, int) and v >= 0 for v in value)
            assert sum(value) == n_test == record["num-examples"]
        else:
            assert isinstance(value, (int, float)) and not isinstance(value, (bool, list)), \
                f"{mtype}: metric '{name}' = {value!r} is not a scalar"
    expected_n = {"query": n_train, "train": n_train, "train.teacher": n_train,
                  "evaluate": n_test}[mtype]
    assert record["num-examples"] == expected_n


# ---------------------------------------------------------------- the federation


# The label-free target terms (issue 25) are computed on the edge and add nothing to a reply
# but their scalar means: every check below runs with them off and on.
LABEL_FREE_TERMS = ["distill.im_weight=1.0", "distill.pl_weight=1.0", "distill.pl_threshold=0.5"]


@pytest.fixture(scope="module", params=[[], LABEL_FREE_TERMS], ids=["defaults", "label-free"])
def tapped_run(request):
    cfg = load_config(overrides=BASE + ["fed.teacher_placement=edge", *request.param])
    assert not cfg.teacher.checkpoint  # the teacher is pre-trained federatedly (train.teacher)
    seen: list[tuple[str, int, object]] = []
    windows: dict[int, tuple[int, int]] = {}
    grid = None

    def tap(request, reply):
        mtype, node = request.metadata.message_type, request.metadata.dst_node_id
        if mtype == "query":  # the node's true window counts, read straight from its data
            rc = SetupConfig.from_record(request.content[wire.CONFIG])
            sim = SimSetup.from_record(request.content[wire.SIM])
            stats = from_record(request.content[wire.NORM])
            data = local_data(rc, sim, dict(grid.contexts[node].node_config),
                              int(grid.contexts[node].node_config["partition-id"]),
                              Normalizer(stats["mean"], stats["std"]))
            windows[node] = (data.num_examples, len(data.test) if data.test is not None else -1)
        seen.append((mtype, node, reply))

    grid = InProcessGrid(load_component("client.node.client_app:app"), CLIENTS, tap=tap)
    result = federate(grid, cfg, progress=False)
    return result, seen, windows


def test_tap_sees_all_four_message_types(tapped_run):
    result, seen, windows = tapped_run
    types = Counter(m for m, _, _ in seen)
    assert set(types) == set(UP_RECORDS), types
    assert types["query"] == CLIENTS and types["train"] == 2 * CLIENTS
    assert types["evaluate"] == CLIENTS and types["train.teacher"] >= CLIENTS
    assert len(windows) == CLIENTS
    assert result.rejected == [] and "mf1" in result.final


def _routed(mtype: str) -> bool:
    """Whether the ClientApp has a handler for `mtype` (an empty message: the handler fails,
    but after Flower routed it)."""
    grid = InProcessGrid(client_app.app, 1)  # sets the task identity Message() needs
    node = grid.node_ids[0]
    msg = Message(RecordDict(), dst_node_id=node, message_type=mtype, group_id="0")
    try:
        client_app.app(msg, grid.contexts[node])
    except ValueError as err:
        return "registered" not in str(err)
    except Exception:  # the handler ran and found no records
        return True
    return True


@pytest.mark.parametrize("mtype", wire.MESSAGE_TYPES)
def test_every_message_type_the_cloud_sends_has_a_client_handler(mtype):
    assert _routed(mtype)


def test_an_unknown_message_type_has_no_handler():
    assert not _routed(f"{wire.TRAIN}.nothing_here")


def test_every_reply_is_within_the_manifest(tapped_run):
    _, seen, windows = tapped_run
    per_node = defaultdict(int)
    for mtype, node, reply in seen:
        assert not reply.has_error(), f"{mtype} to node {node}: {reply.error.reason}"
        assert reply.metadata.src_node_id == node
        n_train, n_test = windows[node]
        assert n_train > 0 and n_test > 0
        check_reply(mtype, reply.content, n_train, n_test)
        assert reply.content["metrics"]["client-id"] == node - 1000
        per_node[node] += 1
    assert len(per_node) == CLIENTS


# ---------------------------------------------------------------- check_outgoing refuses leaks


def _valid_train_reply(n: int = 40) -> tuple[RecordDict, dict]:
    from shared.protocol.records import bn_buffers, group_named_params

    nets = UniKDNets.for_spec(SPEC)
    g = group_named_params(nets)
    content = RecordDict({
        wire.STUDENT_GRAD: to_record({k: torch.zeros_like(p) for k, p in g["student"].items()}),
        wire.D_F_GRAD: to_record({k: torch.zeros_like(p) for k, p in g["d_f"].items()}),
        wire.D_D_GRAD: to_record({k: torch.zeros_like(p) for k, p in g["d_d"].items()}),
        wire.STUDENT_BN: to_record(bn_buffers(nets.student)),
        wire.METRICS: MetricRecord({"client-id": 0, "round": 1, "num-examples": n, "loss": 1.0}),
    })
    shapes = wire.expected_up_shapes(g["student"], g["d_f"], g["d_d"], bn_buffers(nets.student))
    return content, shapes


def test_check_outgoing_accepts_a_valid_reply():
    content, shapes = _valid_train_reply()
    wire.check_outgoing(content, shapes)
    check_reply("train", content, 40, 13)  # and so does the independent checker


def _features(c, n):  # (a) per-sample features as an extra array record
    c["features"] = to_record({"h": torch.randn(n, 32)})


def _features_in_bn(c, n):  # (a') smuggled into an allowed record under a new name
    c[wire.STUDENT_BN]["student.features"] = Array(np.zeros((n, 32), np.float32))


def _labels(c, n):  # (b) a labels array
    c["labels"] = to_record({"y": torch.arange(n) % 6})


def _labels_in_grad(c, n):  # (b') labels inside an allowed record
    c[wire.STUDENT_GRAD]["labels"] = Array((np.arange(n) % 6).astype(np.int64))


def _unknown_metric(c, n):  # (c)
    c[wire.METRICS]["accuracy"] = 0.9


def _list_metric(c, n):  # (d) a list metric other than confusion
    c[wire.METRICS]["loss"] = [0.5] * n


def _confusion_in_train(c, n):  # (d') confusion is not a train metric
    c[wire.METRICS]["confusion"] = [0] * 36


def _wrong_grad_shape(c, n):  # (e) a wrong-shaped gradient (per-sample gradients)
    name = next(iter(c[wire.STUDENT_GRAD].keys()))
    shape = c[wire.STUDENT_GRAD][name].shape
    c[wire.STUDENT_GRAD][name] = Array(np.zeros((n, *shape), np.float32))


def _config_record(c, n):  # (f) a ConfigRecord going up
    c["config"] = ConfigRecord({"round": 1})


def _metric_record_elsewhere(c, n):
    c["extra-metrics"] = MetricRecord({"loss": 1.0})


LEAKS = [_features, _features_in_bn, _labels, _labels_in_grad, _unknown_metric, _list_metric,
         _confusion_in_train, _wrong_grad_shape, _config_record, _metric_record_elsewhere]


@pytest.mark.parametrize("leak", LEAKS, ids=lambda f: f.__name__.strip("_"))
def test_check_outgoing_raises_on_leak(leak):
    content, shapes = _valid_train_reply(n=40)
    leak(content, 40)
    with pytest.raises(wire.WireViolation):
        wire.check_outgoing(content, shapes)


@pytest.mark.parametrize("confusion", [[0] * 35, [0] * 37, [0] * 6])
def test_check_outgoing_eval_confusion_must_be_c_by_c(confusion):
    content = RecordDict({wire.METRICS: MetricRecord(
        {"client-id": 0, "round": 1, "num-examples": 0, "confusion": confusion})})
    with pytest.raises(wire.WireViolation, match="confusion"):
        wire.check_outgoing(content, {}, wire.EVAL_METRICS, SPEC.classes)
    content[wire.METRICS]["confusion"] = [0] * SPEC.classes ** 2
    wire.check_outgoing(content, {}, wire.EVAL_METRICS, SPEC.classes)


def _bn_of_sample_length(c, n):  # a buffer-like name whose length is the window count
    c[wire.STUDENT_BN]["student.bn1.running_mean"] = Array(np.zeros(n, np.float32))


@pytest.mark.parametrize("leak", LEAKS + [_bn_of_sample_length],
                         ids=lambda f: f.__name__.strip("_"))
def test_independent_checker_is_not_vacuous(leak):
    """The hand-written checker refuses every leak check_outgoing refuses (and a bit more)."""
    content, _ = _valid_train_reply(n=40)
    leak(content, 40)
    with pytest.raises(AssertionError):
        check_reply("train", content, 40, 13)


def test_independent_checker_refuses_integer_arrays_of_parameter_shape():
    """The independent checker allows integers only for BN num_batches_tracked (check_outgoing
    checks shapes only, so an integer array shaped like a parameter would pass it)."""
    content, _ = _valid_train_reply(n=40)
    name = "student.head.bias"  # shape [C]: room for C labels
    shape = tuple(content[wire.STUDENT_GRAD][name].shape)
    content[wire.STUDENT_GRAD][name] = Array(np.zeros(shape, np.int64))
    with pytest.raises(AssertionError, match="dtype"):
        check_reply("train", content, 40, 13)


# ---------------------------------------------------------------- a leaking ClientApp


def test_leaking_client_app_returns_error_not_data(monkeypatch, caplog):
    """Client 1's handler tries to add per-sample features to its BN buffers: the node's wire
    check turns the reply into an error, the server logs and rejects it, the others go on."""
    real = client_app.unikd_round

    def leaky(nets, x, teacher, rc, cid, prototypes=None, mover=None):
        grads, buffers, metrics = real(nets, x, teacher, rc, cid, prototypes, mover)
        if cid == 1:
            buffers = {**buffers, "student.per_sample": torch.randn(len(x), 32)}
        return grads, buffers, metrics

    monkeypatch.setattr(client_app, "unikd_round", leaky)
    cfg = load_config(overrides=BASE + ["fed.teacher_placement=source-only"])
    train_replies = []
    grid = InProcessGrid(load_component("client.node.client_app:app"), CLIENTS,
                         tap=lambda q, r: train_replies.append((q.metadata.dst_node_id, r))
                         if q.metadata.message_type == "train" else None)
    with caplog.at_level(logging.WARNING):
        result = federate(grid, cfg, progress=False)

    leaked_node = 1001
    bad = [r for node, r in train_replies if node == leaked_node]
    assert len(bad) == 2 and all(r.has_error() for r in bad)
    assert all("WireViolation" in r.error.reason and "student.per_sample" in r.error.reason
               for r in bad)
    for node, r in train_replies:  # nothing per-sample ever arrived at the server
        if not r.has_error():
            assert "student.per_sample" not in r.content[wire.STUDENT_BN].keys()
    assert len(result.rejected) == 2
    for rnd, text in enumerate(result.rejected, start=1):
        assert str(leaked_node) in text and f"round {rnd}" in text and "WireViolation" in text
    assert any("WireViolation" in rec.getMessage() for rec in caplog.records)
    assert [row["clients"] for row in result.rounds] == [2, 2]  # the others went on
    assert "mf1" in result.final


# ---------------------------------------------------------------- every record read or gone

def cloud_strings() -> set[str]:
    """Every string the cloud's code names: literals, and the values of `wire.X` it uses."""
    import ast

    found: set[str] = set()
    for file in (ROOT / "server").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == "wire" and isinstance(getattr(wire, node.attr, None), str)):
                found.add(getattr(wire, node.attr))
    return found


def test_every_metric_a_client_may_send_is_read_by_the_cloud():
    """Nothing travels unread (issue 24): each metric key the manifest admits is named by
    the cloud's code, as a literal or through its wire constant."""
    unread = sorted(k for k in wire.TRAIN_METRICS | wire.EVAL_METRICS | wire.DELIVER_METRICS
                    if k not in cloud_strings())
    assert not unread, f"metrics clients may send that the cloud never reads: {unread}"


def test_the_teacher_rounds_read_the_target_domain_loss():
    from server.fed.aggregate import ClientUpdate
    from server.fed.teacher_exchange import target_domain_loss

    def update(client, n, metrics):
        return ClientUpdate(client, n, {}, metrics)

    both = [update(0, 30, {wire.TEACHER_DANN_DOM: 0.6}), update(1, 10, {wire.TEACHER_DANN_DOM: 0.2})]
    assert target_domain_loss(both) == pytest.approx(0.5)  # weighted by windows
    assert target_domain_loss([update(0, 30, {})]) is None  # record DP: no metrics
