"""server.fed.aggregate on in-memory Flower messages, with hand-computed expectations.

No Grid and no training: every reply is built here, so each check of `parse_reply`,
`split_replies` and `weighted_mean` is exercised in isolation.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from server.fed.aggregate import ClientUpdate, parse_reply, split_replies, weighted_mean
from server.fed.harness import set_task_identity
from shared.protocol import wire
from shared.errors import ReplyError

RND = 3
SHAPES = {wire.STUDENT_GRAD: {"w": (2, 2), "b": (2,)},
          wire.STUDENT_BN: {"bn.running_mean": (2,), "bn.num_batches_tracked": ()}}
RECORDS = (wire.STUDENT_GRAD, wire.STUDENT_BN)


@pytest.fixture(autouse=True, scope="module")
def _task_identity():
    set_task_identity()  # Message() needs a TaskIdentity, as in server/fed/harness.py


def request(node: int, rnd: int = RND) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type="train", group_id=str(rnd))


def arrays(w: float = 1.0, b: float = 0.0, mean: float = 0.0, nbt: int = 1,
           w_shape: tuple[int, ...] = (2, 2)) -> dict[str, ArrayRecord]:
    return {
        wire.STUDENT_GRAD: ArrayRecord({
            "w": Array(np.full(w_shape, w, dtype=np.float32)),
            "b": Array(np.full((2,), b, dtype=np.float32))}),
        wire.STUDENT_BN: ArrayRecord({
            "bn.running_mean": Array(np.full((2,), mean, dtype=np.float32)),
            "bn.num_batches_tracked": Array(np.array(nbt, dtype=np.int64))}),
    }


def reply(node: int, client: int, n: int, rnd: int = RND, metrics: dict | None = None,
          drop: str | None = None, **arr_kw) -> Message:
    recs: dict = arrays(**arr_kw)
    if drop is not None:
        recs.pop(drop)
    m = {"client-id": client, "round": rnd, "num-examples": n, "loss": 0.5}
    m.update(metrics or {})
    recs[wire.METRICS] = MetricRecord({k: v for k, v in m.items() if v is not None})
    return Message(RecordDict(recs), reply_to=request(node, rnd))


# ---------------------------------------------------------------- weighted mean


def test_weighted_mean_by_num_examples():
    # Prepare: 1 and 3 examples -> weights 0.25 and 0.75
    replies = [reply(1000, 0, 1, w=4.0, b=-1.0, mean=2.0, nbt=4),
               reply(1001, 1, 3, w=8.0, b=1.0, mean=6.0, nbt=8)]
    # Execute
    updates, errors = split_replies(replies, RND, SHAPES, RECORDS)
    grad = weighted_mean(updates, wire.STUDENT_GRAD)
    bn = weighted_mean(updates, wire.STUDENT_BN)
    # Assert
    assert errors == []
    assert [u.num_examples for u in updates] == [1, 3]
    assert torch.equal(grad["w"], torch.full((2, 2), 0.25 * 4.0 + 0.75 * 8.0))  # 7.0
    assert torch.equal(grad["b"], torch.full((2,), 0.25 * -1.0 + 0.75 * 1.0))  # 0.5
    assert torch.equal(bn["bn.running_mean"], torch.full((2,), 5.0))
    assert grad["w"].dtype == torch.float32
    # integer counts are averaged in float64, never truncated
    assert bn["bn.num_batches_tracked"].dtype == torch.float64
    assert bn["bn.num_batches_tracked"].item() == 0.25 * 4 + 0.75 * 8


def test_weighted_mean_all_zero_examples_is_plain_mean():
    ups = [ClientUpdate(0, 0, {"k": {"x": torch.tensor([2.0])}}, {}),
           ClientUpdate(1, 0, {"k": {"x": torch.tensor([4.0])}}, {})]
    assert torch.equal(weighted_mean(ups, "k")["x"], torch.tensor([3.0]))


def test_replies_sorted_by_client_id_regardless_of_arrival():
    # Prepare: three clients whose float32 weighted sum depends on the order of addition
    vals = {0: (1.0, 7), 1: (3e7, 5), 2: (-3e7, 11)}
    msgs = {c: reply(1000 + c, c, n, w=v) for c, (v, n) in vals.items()}
    orders = [(0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)]
    # Execute
    results = []
    for order in orders:
        updates, errors = split_replies([msgs[c] for c in order], RND, SHAPES, RECORDS)
        assert errors == []
        assert [u.client for u in updates] == [0, 1, 2]
        results.append(weighted_mean(updates, wire.STUDENT_GRAD)["w"])
    # Assert: bit-identical aggregates whatever the order of arrival ...
    for r in results[1:]:
        assert torch.equal(r, results[0])
    # ... although summing in arrival order would not be (so the sort is what makes it so)
    naive = []
    for order in orders:
        ups = [parse_reply(msgs[c], RND, SHAPES, RECORDS) for c in order]
        naive.append(weighted_mean(ups, wire.STUDENT_GRAD)["w"])
    assert any(not torch.equal(n, naive[0]) for n in naive[1:])


def test_parse_reply_valid():
    u = parse_reply(reply(1004, 4, 12, w=2.0), RND, SHAPES, RECORDS)
    assert (u.client, u.num_examples) == (4, 12)
    assert u.metrics["loss"] == 0.5
    assert torch.equal(u.arrays[wire.STUDENT_GRAD]["w"], torch.full((2, 2), 2.0))
    assert u.arrays[wire.STUDENT_BN]["bn.num_batches_tracked"].dtype == torch.int64


# ---------------------------------------------------------------- rejections


def _error_reply() -> Message:
    return Message(Error(code=0, reason="DataError: boom"), reply_to=request(1007))


def _no_metrics() -> Message:
    return Message(RecordDict(arrays()), reply_to=request(1007))


BAD = {
    # case: (message factory, text that must appear in the error, how the client is named)
    "error reply": (_error_reply, "boom", "node 1007"),
    "missing metrics": (_no_metrics, "no metrics", "node 1007"),
    "stale round": (lambda: reply(1007, 7, 5, rnd=RND - 1), "stale", "client 7"),
    "future round": (lambda: reply(1007, 7, 5, rnd=RND + 1), "stale", "client 7"),
    "missing record": (lambda: reply(1007, 7, 5, drop=wire.STUDENT_BN), "missing record",
                       "client 7"),
    "wrong shape": (lambda: reply(1007, 7, 5, w_shape=(5, 2)), "shape", "client 7"),
    "per-sample shape": (lambda: reply(1007, 7, 5, w_shape=(5, 2, 2)), "shape", "client 7"),
    "NaN gradient": (lambda: reply(1007, 7, 5, w=float("nan")), "NaN", "client 7"),
    "Inf gradient": (lambda: reply(1007, 7, 5, b=float("inf")), "Inf", "client 7"),
    "-Inf BN": (lambda: reply(1007, 7, 5, mean=float("-inf")), "Inf", "client 7"),
    "negative num-examples": (lambda: reply(1007, 7, -1), "num-examples", "client 7"),
    "float num-examples": (lambda: reply(1007, 7, 2.5), "num-examples", "client 7"),
    "missing num-examples": (lambda: reply(1007, 7, None), "num-examples", "client 7"),
    "NaN metric": (lambda: reply(1007, 7, 5, metrics={"loss": float("nan")}), "loss",
                   "client 7"),
    "Inf metric": (lambda: reply(1007, 7, 5, metrics={"kd": math.inf}), "kd", "client 7"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_parse_reply_rejects(case):
    make, text, who = BAD[case]
    with pytest.raises(ReplyError) as info:
        parse_reply(make(), RND, SHAPES, RECORDS)
    msg = str(info.value)
    assert text in msg
    assert who in msg, f"error does not name the client: {msg}"
    assert f"round {RND}" in msg, f"error does not name the round: {msg}"
    assert info.value.round == RND


def test_extra_and_missing_array_names_rejected():
    msg = reply(1007, 7, 5)
    msg.content[wire.STUDENT_GRAD]["extra"] = Array(np.zeros((2,), dtype=np.float32))
    with pytest.raises(ReplyError, match="unexpected.*extra"):
        parse_reply(msg, RND, SHAPES, RECORDS)
    msg = reply(1007, 7, 5)
    del msg.content[wire.STUDENT_GRAD]["b"]
    with pytest.raises(ReplyError, match="missing.*'b'"):
        parse_reply(msg, RND, SHAPES, RECORDS)


def test_a_reply_that_ran_other_local_steps_is_refused():
    """The cloud reads `local-steps`: a pseudo-gradient over other steps has another scale."""
    echo = {"local-steps": 2}
    ok = parse_reply(reply(1, 0, 5, metrics={"local-steps": 2}), RND, SHAPES, RECORDS, echo)
    assert ok.client == 0 and ok.metrics["local-steps"] == 2
    for ran in (1, None):  # other steps, or none reported
        with pytest.raises(ReplyError, match="'local-steps' is .*asked for 2"):
            parse_reply(reply(1, 0, 5, metrics={"local-steps": ran}), RND, SHAPES, RECORDS, echo)


def test_missing_client_id_is_a_reply_error():
    with pytest.raises(ReplyError, match="node 1007"):
        parse_reply(reply(1007, None, 5), RND, SHAPES, RECORDS)


def test_split_replies_drops_bad_and_duplicates_and_logs(caplog):
    # Prepare: 2 good clients, one NaN, one duplicate of client 0, one error reply
    replies = [reply(1002, 2, 3, w=1.0), reply(1000, 0, 1, w=2.0),
               reply(1005, 5, 4, w=float("nan")), reply(1009, 0, 9, w=3.0), _error_reply()]
    # Execute
    with caplog.at_level(logging.WARNING, logger="server.fed.aggregate"):
        updates, errors = split_replies(replies, RND, SHAPES, RECORDS)
    # Assert
    assert [u.client for u in updates] == [0, 2]
    # the first reply of client 0 to arrive is the one kept (n=1, w=2.0)
    assert updates[0].num_examples == 1
    assert torch.equal(updates[0].arrays[wire.STUDENT_GRAD]["w"], torch.full((2, 2), 2.0))
    texts = sorted(str(e) for e in errors)
    assert len(errors) == 3
    assert any("client 0" in t and "second reply" in t and f"round {RND}" in t for t in texts)
    assert any("client 5" in t and "NaN" in t for t in texts)
    assert any("node 1007" in t and "boom" in t for t in texts)
    logged = [r.getMessage() for r in caplog.records]
    assert all(any(t == m for m in logged) for t in texts), "every rejection is logged"
    mean = weighted_mean(updates, wire.STUDENT_GRAD)["w"]
    assert torch.equal(mean, torch.full((2, 2), 0.25 * 2.0 + 0.75 * 1.0))


def test_all_rejected_gives_no_updates():
    updates, errors = split_replies([_error_reply(), reply(1001, 1, 2, rnd=0)], RND, SHAPES,
                                    RECORDS)
    assert updates == []
    assert len(errors) == 2
