"""A Flower Grid that runs the ClientApp in this process: no Ray, no network.

Messages still go through Flower's protobuf serialisation both ways, so what the harness
measures and checks is what a real transport would carry. The ClientApp is passed in (loaded by
its component reference, as Flower's runtime does), so the cloud package imports no edge code.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, Context, Error, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto

from server.fed.availability import Availability
from shared.protocol import wire
from shared.protocol.packing import is_packed, pack_content, unpack_content

log = logging.getLogger(__name__)

ErrorCode = 0  # flwr's generic client-app exception code
FIRST_NODE = 1000  # simulated client k is node FIRST_NODE + k
CORRUPTIONS = ("nan", "shape", "huge", "stale")


@dataclass(frozen=True)
class FaultPlan:
    """Seeded faults: each (round, node) draws from a generator of (seed, round, node) alone,
    so a run, or a resumed run, sees the same faults every time.

    dropout: a node is offline for the round (no reply). straggler: it computes but its reply
    misses the round's timeout (dropped, as Flower's `send_and_receive(timeout=...)` would).
    corrupt: its reply is damaged in transit by one of `kinds` (see `corrupt_reply`).
    Only `message_types` are affected (training by default; evaluation stays comparable).
    """

    dropout: float = 0.0
    straggler: float = 0.0
    corrupt: float = 0.0
    seed: int = 0
    kinds: tuple[str, ...] = CORRUPTIONS
    message_types: tuple[str, ...] = (wire.TRAIN,)

    def draw(self, rnd: int, node: int) -> str | None:
        u = np.random.default_rng([self.seed, rnd, node, 0xFA17]).random(3)
        if u[0] < self.dropout:
            return "dropout"
        if u[1] < self.straggler:
            return "straggler"
        if u[2] < self.corrupt and self.kinds:
            pick = np.random.default_rng([self.seed, rnd, node, 0xBAD]).integers(len(self.kinds))
            return self.kinds[int(pick)]
        return None

    @classmethod
    def from_config(cls, fed, seed: int) -> FaultPlan | None:
        """The plan of `fed.dropout`, `fed.straggler_fraction`, `fed.corrupt_fraction`."""
        if not (fed.dropout or fed.straggler_fraction or fed.corrupt_fraction):
            return None
        return cls(fed.dropout, fed.straggler_fraction, fed.corrupt_fraction, seed)


def _round_of(msg: Message) -> int:
    """The round a message belongs to (the cloud sends it as the group id)."""
    try:
        return int(msg.metadata.group_id)
    except (TypeError, ValueError):
        return 0


def corrupt_reply(reply: Message, kind: str, rnd: int) -> None:
    """Damage a train reply in place: NaN, a wrong shape, a huge norm, or a stale round."""

    content = reply.content
    if kind == "stale":
        content[wire.METRICS]["round"] = rnd - 1
        return
    if kind == "huge":
        for key in wire.GRAD_RECORDS:
            rec = content[key]
            for name in list(rec.keys()):
                rec[name] = Array(rec[name].numpy() * np.float32(1e4))
        return
    rec = content[wire.STUDENT_GRAD]
    name = next(iter(rec.keys()))
    arr = np.array(rec[name].numpy(), copy=True)
    if kind == "nan":
        arr.flat[0] = np.nan
    elif kind == "shape":
        arr = np.zeros((arr.shape[0] + 1, *arr.shape[1:]), dtype=arr.dtype)
    else:
        raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
    rec[name] = Array(arr)


def _unpacked(msg: Message) -> Message:
    """A message with its ArrayRecords as records again (the same message when not packed)."""
    if not msg.has_content() or not is_packed(msg.content):
        return msg
    return Message(metadata=msg.metadata, content=unpack_content(msg.content))


def load_component(ref: str):
    """'package.module:attr' -> the object (e.g. the ClientApp)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def set_task_identity() -> None:
    """The task identity Flower's `Message()` needs, set once per process."""
    from flwr.supercore.task_identity import TaskIdentity  # internal; see flower-notes §4.4

    if getattr(TaskIdentity, "_run_id", None) is None:
        TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1


def call_client(client_app, msg: Message, context: Context) -> Message:
    """The ClientApp's reply; its exception becomes an error reply, as in Flower."""
    try:
        return client_app(msg, context)
    except Exception as exc:
        log.debug("node %s raised", msg.metadata.dst_node_id, exc_info=True)
        return Message(Error(code=ErrorCode, reason=f"{type(exc).__name__}: {exc}"),
                       reply_to=msg)


def new_context(nid: int, node_config: dict) -> Context:
    """A simulated node's fresh Context (empty state), wherever its ClientApp runs."""
    return Context(run_id=1, node_id=nid, node_config=node_config, state=RecordDict(),
                   run_config={})


class LazyContexts(dict):
    """Each node's `Context`, made when first asked for: a population of 100,000 simulated
    clients holds nothing per client until it takes part, and then only its state (the grid
    forgets a context again whose state stayed empty: a fresh one is the same)."""

    def __init__(self, make: Callable[[int], Context]):
        super().__init__()
        self.make = make

    def __missing__(self, node: int) -> Context:
        ctx = self[node] = self.make(node)
        return ctx


class InProcessGrid:
    """Implements the parts of `flwr.serverapp.Grid` the cloud uses."""

    def __init__(self, client_app, num_nodes: int, node_config: Callable[[int], dict] | None = None,
                 tap: Callable[[Message, Message], None] | None = None,
                 faults: FaultPlan | None = None):
        set_task_identity()
        self.faults = faults  # seeded dropout / stragglers / corrupted replies (None: none)
        self.fault_log: list[dict] = []  # {"round", "node", "type", "fault"} per injected fault
        self.client_app = client_app
        self.tap = tap  # sees every (request, reply) pair: used by the wire-manifest test
        self.num_nodes = num_nodes
        self.node_ids = range(FIRST_NODE, FIRST_NODE + num_nodes)  # client k is node 1000 + k
        self.node_config = node_config
        self.contexts = LazyContexts(self._make_context)
        self.online = set(self.node_ids)
        self.availability: Availability | None = None  # simulated devices coming and going
        # where the simulated nodes compute (their node config's `device`): the run's resolved
        # device, set by the round loop before the first message (`use_device`); a node
        # config given by the caller keeps its own (absent: the node's default, cpu)
        self.device = "cpu"
        self._pushed = 0
        self._replies: dict[str, Message] = {}

    def _make_context(self, nid: int) -> Context:
        return new_context(nid, self.node_config_of(nid))

    def node_config_of(self, nid: int) -> dict:
        """Node `nid`'s node config (KeyError for a node outside the federation)."""
        i = nid - FIRST_NODE
        if not 0 <= i < self.num_nodes:
            raise KeyError(nid)
        return (self.node_config(i) if self.node_config else
                {"partition-id": i, "num-partitions": self.num_nodes,
                 # cloud and nodes share this process: reproducible DP
                 # draws (a deployed node keys them with its own secret)
                 "dp-reproducible": True, "device": self.device})

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.node_ids if n in self.online]

    def nodes_at(self, rnd: int) -> list[int]:
        """The nodes online at round `rnd`: connected (`online`) and, under the simulated
        availability model (server/fed/availability.py), drawn on for that round."""
        if self.availability is None:
            return list(self.get_node_ids())
        return [n for n in (FIRST_NODE + int(k) for k in self.availability.online(rnd))
                if n in self.online]

    complete_on_push = True  # every reply exists once push_messages returns (no waiting)
    # cloud and nodes share this process: the cloud's central-DP noise comes from the run seed
    # alone (server/fed/dp/client_level.py cloud_secret), as the nodes' draws do ("dp-reproducible")
    dp_reproducible = True

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message to its node now; its reply (if any) waits for `pull_messages`."""
        ids = []
        for msg in messages:
            self._pushed += 1
            mid = f"inprocess-{self._pushed}"
            msg.metadata.__dict__["_message_id"] = mid  # as Flower's Grids do on push
            reply = self._deliver(msg)
            if reply is not None:
                self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, msg: Message) -> Message | None:
        """The node's reply as the transport would deliver it; None when it never arrives."""
        fault = self._fault(msg)
        if fault == "dropout":  # the node is offline this round: it never sees the message
            return None
        return self._arrived(msg, self._call(msg), fault)

    def _call(self, msg: Message) -> Message:
        """The node's ClientApp on the message as a transport delivers it: its reply, as one."""
        nid = msg.metadata.dst_node_id
        wire_msg = message_from_proto(message_to_proto(msg))  # what a transport would deliver
        context = self.contexts[nid]
        reply = call_client(self.client_app, wire_msg, context)
        if not context.state and self.contexts.get(nid) is context:
            del self.contexts[nid]  # nothing kept: a fresh context is the same one
        return message_from_proto(message_to_proto(reply))

    def _arrived(self, msg: Message, reply: Message, fault: str | None) -> Message | None:
        """What of the node's `reply` to `msg` arrives under `fault`, tapped (None: nothing)."""
        if fault == "straggler":  # it computed, but its reply came after the round's timeout
            return None
        if reply.has_error() or (fault is None and self.tap is None):
            if self.tap is not None:
                self.tap(_unpacked(msg), reply)
            return reply
        # Faults and the tap work on the records themselves, whether or not they travel packed.
        view = _unpacked(reply)
        if fault is not None:
            corrupt_reply(view, fault, _round_of(msg))
            if is_packed(reply.content):
                reply.content = pack_content(view.content)
        if self.tap is not None:
            self.tap(_unpacked(msg), view)
        return reply

    def _fault(self, msg: Message) -> str | None:
        """The fault injected for this message (None: delivered and answered as is)."""
        f = self.faults
        if f is None or msg.metadata.message_type not in f.message_types:
            return None
        rnd, node = _round_of(msg), msg.metadata.dst_node_id
        fault = f.draw(rnd, node)
        if fault is not None:
            self.fault_log.append({"round": rnd, "node": node, "type": msg.metadata.message_type,
                                   "fault": fault})
            log.info("round %d: node %s %s (simulated)", rnd, node, fault)
        return fault

    def use_device(self, device: str) -> None:
        """The simulated nodes compute on `device` ("cpu" or "cuda", resolved by the cloud):
        in a simulation the cloud's machine is every node's machine. Nodes whose context
        exists already keep the config they were made with."""
        self.device = device

    def use_config_faults(self, fed, seed: int) -> None:
        """Take the config's fault plan and availability model unless given already."""
        if self.faults is None:
            self.faults = FaultPlan.from_config(fed, seed)
        if self.availability is None:
            self.availability = Availability.from_config(fed, seed, self.num_nodes)
