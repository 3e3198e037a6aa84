"""The round loop's own push/pull: it polls at `fed.poll_interval`, honours its timeout, sorts
replies by node id, drops duplicate and late replies, and turns an undecodable reply into an
error naming the node and the round. A fake Grid on a fake clock: no sleeping, no Flower runtime."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from server.fed import transport
from server.fed.transport import Sender, TransportOptions, start_exchange
from shared.config import load_config
from shared.errors import ConfigError
from shared.protocol import wire
from shared.protocol.packing import STYPE, is_packed, unpack_content


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class FakeGrid:
    """Node n answers `delay[n]` seconds after the push (never, when absent)."""

    def __init__(self, clock: Clock, delay: dict[int, float], packed_reply: bool = False,
                 duplicate: bool = False):
        self.clock, self.delay, self.duplicate = clock, delay, duplicate
        self.packed_reply = packed_reply
        self.pushed: list[Message] = []
        self.pulls = 0
        self._t0 = 0.0

    def push_messages(self, messages):
        self._t0 = self.clock()
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
            self.pushed.append(msg)
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        out = []
        for msg in self.pushed:
            mid, node = msg.metadata.message_id, msg.metadata.dst_node_id
            if mid in ids and node in self.delay and self.clock() - self._t0 >= self.delay[node]:
                content = RecordDict({wire.METRICS: MetricRecord({"client-id": node})})
                if self.packed_reply:
                    content = RecordDict({wire.PACKED: ArrayRecord({"blob": Array(
                        dtype="uint8", shape=(3,), stype=STYPE, data=b"bad")})})
                reply = Message(content, reply_to=msg)
                out.append(reply)
                if self.duplicate:
                    out.append(Message(content, reply_to=msg))
        return out


@pytest.fixture(autouse=True)
def _task_identity():
    """Message() needs a TaskIdentity; no Flower runtime here (and no test may rely on another
    having set one)."""
    from server.fed.harness import set_task_identity

    set_task_identity()


def _msgs(nodes):
    return [Message(RecordDict({wire.METRICS: MetricRecord({"x": 1})}), dst_node_id=n,
                    message_type="query", group_id="0") for n in nodes]


def test_replies_sorted_by_node_id_and_polled_at_the_interval():
    clock = Clock()
    grid = FakeGrid(clock, {30: 0.2, 10: 0.05, 20: 0.0})
    replies = start_exchange(grid, _msgs([30, 10, 20]), 5.0, 0.05, clock, clock.sleep)()
    assert [r.metadata.src_node_id for r in replies] == [10, 20, 30]
    assert all(s == pytest.approx(0.05) for s in clock.sleeps)
    assert clock.now == pytest.approx(0.2)  # done at the last reply, not at a 3 s tick


def test_timeout_returns_the_replies_that_arrived():
    clock = Clock()
    grid = FakeGrid(clock, {1: 0.1, 2: 100.0})  # node 3 never answers
    replies = start_exchange(grid, _msgs([1, 2, 3]), 1.0, 0.3, clock, clock.sleep)()
    assert [r.metadata.src_node_id for r in replies] == [1]
    assert clock.now == pytest.approx(1.0)  # the last sleep is cut to the deadline
    assert max(clock.sleeps) <= 0.3 + 1e-9


def test_duplicate_replies_are_dropped():
    clock = Clock()
    replies = start_exchange(FakeGrid(clock, {1: 0.0, 2: 0.0}, duplicate=True), _msgs([2, 1]),
                             1.0, 0.05, clock, clock.sleep)()
    assert [r.metadata.src_node_id for r in replies] == [1, 2]


def test_undecodable_reply_becomes_an_error_naming_node_and_round(monkeypatch):
    clock = Clock()
    grid = FakeGrid(clock, {5: 0.0}, packed_reply=True)
    monkeypatch.setattr(transport, "start_exchange",
                        lambda g, m, t, p: start_exchange(g, m, t, p, clock, clock.sleep))
    (reply,) = Sender(grid, 1.0)({5: RecordDict({wire.METRICS: MetricRecord({"x": 1})})},
                                 "train", 7)
    assert reply.has_error()
    assert "node 5" in reply.error.reason and "round 7" in reply.error.reason


def test_send_packs_each_shared_content_once(monkeypatch):
    clock = Clock()
    grid = FakeGrid(clock, {1: 0.0, 2: 0.0, 3: 0.0})
    monkeypatch.setattr(transport, "start_exchange",
                        lambda g, m, t, p: start_exchange(g, m, t, p, clock, clock.sleep))
    shared = RecordDict({"student": ArrayRecord({"w": Array(np.ones((2, 2), np.float32))})})
    other = RecordDict({"student": ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})})
    Sender(grid, 1.0)({3: shared, 1: shared, 2: other}, "train", 1)
    by_node = {m.metadata.dst_node_id: m for m in grid.pushed}
    assert all(is_packed(m.content) for m in grid.pushed)
    assert by_node[1].content is by_node[3].content  # one packed object for both
    np.testing.assert_array_equal(
        unpack_content(by_node[2].content)["student"]["w"].numpy(), np.zeros((2, 2)))
    grid.pushed.clear()
    Sender(grid, 1.0, TransportOptions(pack=False))({1: shared}, "train", 1)
    assert grid.pushed[0].content is shared


def test_a_grid_without_push_and_pull_uses_its_send_and_receive():
    class Old:
        def send_and_receive(self, messages, *, timeout=None):
            return [Message(RecordDict(), reply_to=m) for m in reversed(list(messages))]

    replies = start_exchange(Old(), _msgs([2, 1]), 1.0, 0.05)()
    assert [r.metadata.src_node_id for r in replies] == [1, 2]


def test_transport_config_keys_are_validated():
    cfg = load_config(overrides=["fed.poll_interval=0.2", "fed.pack=false"])
    assert TransportOptions.from_fed(cfg.fed) == TransportOptions(0.2, False)
    with pytest.raises(ConfigError, match="poll_interval"):
        load_config(overrides=["fed.poll_interval=0"])
