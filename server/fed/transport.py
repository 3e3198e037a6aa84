"""The round loop's own transport: push, then pull every `poll_interval` seconds until every node
answered or the timeout passed; replies come back unpacked and sorted by node id.

Flower's `Grid.send_and_receive` sleeps 3 s between pulls (flwr/superlink/grid/http_grid.py),
which is most of a deployed round when a round computes in a fraction of a second. This module
uses the public `push_messages` / `pull_messages` instead. With `pack` on, all ArrayRecords of a
message travel as one array (shared/protocol/packing.py): one Flower object and one HTTPS
request instead of one per array; the ClientApp's packing mod (client/node/packing.py) unpacks
on arrival and packs its reply after its wire check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Error, Message, RecordDict

from shared.protocol.packing import PackError, pack_content, unpack_content

log = logging.getLogger(__name__)
UNPACK_ERROR = 0  # flwr's generic error code: a reply the cloud could not decode


@dataclass(frozen=True)
class TransportOptions:
    poll_interval: float = 0.05  # seconds between pulls
    pack: bool = True  # one packed array per message

    @classmethod
    def from_fed(cls, fed) -> TransportOptions:
        return cls(fed.poll_interval, fed.pack)


def start_exchange(grid, messages: list[Message], timeout: float | None, poll_interval: float,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> Callable[[], list[Message]]:
    """Push `messages` now and return the call that pulls their replies, so the cloud can
    compute while the nodes do. That call pulls until all arrived or `timeout` seconds passed
    since the push (None: wait for all), and returns the replies sorted by sending node id;
    late replies are simply not returned.

    A Grid whose replies all exist once push returns (the in-process harness says so with
    `complete_on_push`) is pulled once; a Grid without push/pull falls back to its own
    `send_and_receive`.
    """
    if not hasattr(grid, "push_messages"):
        return lambda: sort_replies(grid.send_and_receive(messages, timeout=timeout))
    deadline = None if timeout is None else clock() + timeout
    pending = {mid for mid in grid.push_messages(messages) if mid}
    if len(pending) < len(messages):
        log.warning("%d of %d messages could not be pushed", len(messages) - len(pending),
                    len(messages))
    return lambda: pull_replies(grid, pending, deadline, poll_interval, clock, sleep)


def pull_replies(grid, pending: set[str], deadline: float | None, poll_interval: float,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> list[Message]:
    """Pull until every pushed message is answered or the deadline passed."""
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(sorted(pending)))
        for reply in got:
            mid = reply.metadata.reply_to_message_id
            if mid in pending:  # a duplicate delivery of an answered message is dropped
                pending.discard(mid)
                replies.append(reply)
        if not pending or getattr(grid, "complete_on_push", False):
            break
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                break
            sleep(min(poll_interval, left))
        else:
            sleep(poll_interval)
    return sort_replies(replies)


def sort_replies(replies) -> list[Message]:
    return sorted(replies, key=lambda r: r.metadata.src_node_id)


def unpack_reply(reply: Message, rnd: int) -> Message:
    """The reply with its ArrayRecords restored; an undecodable one becomes an error reply
    naming the node and the round (the round then goes on without it)."""
    if reply.has_error():
        return reply
    try:
        content = unpack_content(reply.content)
    except PackError as err:
        reason = f"node {reply.metadata.src_node_id}, round {rnd}: {err}; reply dropped"
        log.warning("%s", reason)
        return Message(metadata=reply.metadata, error=Error(code=UNPACK_ERROR, reason=reason))
    return reply if content is reply.content else Message(metadata=reply.metadata,
                                                          content=content)


@dataclass
class Sender:
    """The run's one sender: the count query, teacher rounds, UNI-KD rounds and their
    secure-aggregation stages, evaluation and deliveries all go through it.

    `send(contents, mtype, rnd)`: one message per node (`contents[node]`), group id = round;
    the replies of the nodes that answered within `timeout`, unpacked, sorted by node id. Nodes
    that share a content object share its packed form: packed once, not once per node.

    `exchanges` counts the run's message exchanges, once per round trip: one call asks all its
    nodes at once, so on a real network it costs one round trip (and the slowest node's time),
    whatever the number of nodes. Count query, teacher rounds, UNI-KD rounds, each secure-
    aggregation stage, evaluations and deliveries all count.
    """

    grid: object
    timeout: float | None  # seconds to wait for replies; None: wait for every node
    opts: TransportOptions = TransportOptions()
    exchanges: int = field(default=0, init=False)

    def __call__(self, contents: dict[int, RecordDict], mtype: str, rnd: int) -> list[Message]:
        return self.start(contents, mtype, rnd)()

    def start(self, contents: dict[int, RecordDict], mtype: str, rnd: int
              ) -> Callable[[], list[Message]]:
        """Send now; the returned call collects the replies (unpacked, sorted by node id).
        What was sent is serialised on sending: the cloud may change its own copies meanwhile."""
        if contents:
            self.exchanges += 1
        packed: dict[int, RecordDict] = {}
        msgs = []
        for node in sorted(contents):
            content = contents[node]
            if self.opts.pack:
                content = packed.setdefault(id(content), pack_content(content))
            msgs.append(Message(content, dst_node_id=node, message_type=mtype,
                                group_id=str(rnd)))
        collect = start_exchange(self.grid, msgs, self.timeout, self.opts.poll_interval)
        return lambda: [unpack_reply(r, rnd) for r in collect()]

    def to_all(self, nodes: list[int], content: RecordDict, mtype: str, rnd: int
               ) -> list[Message]:
        """The same content to every node of `nodes`."""
        return self({n: content for n in nodes}, mtype, rnd)
