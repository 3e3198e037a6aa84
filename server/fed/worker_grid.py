"""The in-process simulation on several cores: the simulated clients' ClientApps run in worker
processes, each owning a fixed share of the nodes (node index mod workers) and their `Context`s.
By default share 0 stays in the cloud's own process, which would otherwise only wait for the
replies: `workers` processes compute, workers - 1 of them started for it.

Everything else is the in-process harness's (server/fed/harness.py): the cloud's process draws
the faults, drops, delays, corrupts and taps the replies exactly as `InProcessGrid` does, in the
order the messages were pushed. Messages travel to the workers as Flower protobuf bytes and
replies come back as such, what the harness's own round trip through protobuf does in one
process. `push_messages` sends every message before it collects a reply, so the nodes of
different workers compute at once.

Every client call seeds its own random draws from (seed, client, round) (shared/clock/
seeding.py) and its caches are pure functions of what they are given, so which process runs a
node does not change a bit of the results (tests/test_worker_grid.py checks the whole run).
Workers are started with "spawn" (forking a process that has used torch's thread pools can
hang), run one torch thread each, and stop on `close()`, on leaving a `with` block, when the
grid is collected or at exit. A worker that dies is an error naming the node it was serving.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
import weakref
from collections.abc import Iterable
from multiprocessing.connection import Connection, wait

from flwr.app import Context, Message
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

from server.fed.harness import (FIRST_NODE, FaultPlan, InProcessGrid, call_client,
                               load_component, new_context, set_task_identity)
from shared.errors import UnikdError

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0  # seconds a worker gets to stop before it is terminated


def resolve_workers(fed) -> int:
    """`fed.workers` as a count: 0 = min(fed.clients, CPU cores + 1); never more than the
    clients. The + 1: share 0 runs in the cloud's process, which also runs the cloud's own steps
    while the other shares wait (on 2 cores the short main job took 22-25 s at 3 shares against
    25-29 s at 2 and 30-33 s at 1; BENCHMARKS.md "Simulated clients on every core")."""
    want = fed.workers or (os.cpu_count() or 1) + 1
    return max(1, min(want, fed.clients))


def to_bytes(msg: Message) -> bytes:
    return message_to_proto(msg).SerializeToString()


def from_bytes(data: bytes) -> Message:
    return message_from_proto(ProtoMessage.FromString(data))


# --- the worker process ---------------------------------------------------------------------

def _reader(conn: Connection, inbox: queue.Queue) -> None:
    """Drain the requests as they come, so the cloud's sends never wait on a busy worker (and a
    worker sending a reply never waits on a cloud that is still sending)."""
    try:
        while True:
            item = conn.recv()
            inbox.put(item)
            if item[0] == "stop":
                return
    except (EOFError, OSError):
        inbox.put(("stop",))


def _worker_main(client_ref: str, requests: Connection, replies: Connection,
                 log_level: int) -> None:
    """One worker: run the ClientApp on each request, keep its nodes' contexts between calls."""
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=log_level)
    set_task_identity()
    app = load_component(client_ref)
    contexts: dict[int, Context] = {}
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(requests, inbox), daemon=True).start()
    while True:
        item = inbox.get()
        op = item[0]
        if op == "stop":
            return
        start = time.perf_counter()
        try:
            if op == "call":
                _, nid, node_config, data = item
                msg = from_bytes(data)
                context = contexts.get(nid)
                if context is None:
                    context = contexts[nid] = new_context(nid, node_config)
                reply = call_client(app, msg, context)
                if not context.state:
                    del contexts[nid]  # nothing kept: a fresh context is the same one
                data = to_bytes(reply)
                replies.send(("ok", data, time.perf_counter() - start))
            elif op == "state":  # the keys a node keeps (tests, diagnostics)
                ctx = contexts.get(item[1])
                replies.send(("ok", sorted(ctx.state.keys()) if ctx is not None else [], 0.0))
            else:
                replies.send(("failed", f"unknown request {op!r}", 0.0))
        except Exception:  # a failure outside the ClientApp itself: the cloud raises it
            replies.send(("failed", traceback.format_exc(), 0.0))


# --- the cloud's side -----------------------------------------------------------------------

def _shutdown(procs: list, conns: list) -> None:
    """Stop the workers: ask, wait, then terminate any that did not stop."""
    for conn in conns:
        try:
            conn.send(("stop",))
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.join(STOP_TIMEOUT)
        if proc.is_alive():
            proc.terminate()
            proc.join(STOP_TIMEOUT)
    for conn in conns:
        conn.close()


class WorkerGrid(InProcessGrid):
    """`InProcessGrid` whose ClientApp calls run in `workers` processes (see the module doc).

    `client_ref` is the ClientApp's component reference ("client.node.client_app:app"), which
    each worker loads itself. `node_config` is called in this process; its dicts travel.
    `in_cloud`: share 0 of the nodes runs in this (the cloud's) process, which would otherwise
    sit waiting for the replies, so `workers` counts it and starts workers - 1 processes;
    False: `workers` processes of their own, this one only sends and collects.
    """

    def __init__(self, client_ref: str, num_nodes: int, workers: int,
                 node_config=None, tap=None, faults: FaultPlan | None = None,
                 in_cloud: bool = True, start_method: str = "spawn"):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        super().__init__(load_component(client_ref) if in_cloud else None, num_nodes,
                         node_config=node_config, tap=tap, faults=faults)
        self.client_ref = client_ref
        self.workers = min(workers, num_nodes)  # shares of the nodes
        self.in_cloud = in_cloud
        ctx = mp.get_context(start_method)
        self._procs: dict[int, mp.process.BaseProcess] = {}  # share -> its worker process
        self._requests: dict[int, Connection] = {}  # cloud -> worker
        self._reply_conns: dict[int, Connection] = {}  # worker -> cloud
        level = logging.getLogger().getEffectiveLevel()
        for w in range(1 if in_cloud else 0, self.workers):
            req_r, req_w = ctx.Pipe(duplex=False)
            rep_r, rep_w = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(client_ref, req_r, rep_w, level),
                               name=f"unikd-client-worker-{w}", daemon=True)
            proc.start()
            req_r.close()  # the worker's ends: a dead worker then reads as EOF here
            rep_w.close()
            self._procs[w], self._requests[w], self._reply_conns[w] = proc, req_w, rep_r
        self._finalizer = weakref.finalize(self, _shutdown, list(self._procs.values()),
                                           [*self._requests.values(), *self._reply_conns.values()])
        self._broken: str | None = None
        self._inflight: tuple[list, list] | None = None  # pushed, not yet pulled
        self.busy = [0.0] * self.workers  # seconds each share spent on requests (diagnostics)

    def owner(self, nid: int) -> int:
        """The share that runs node `nid` (its index mod the shares); with `in_cloud`, share 0
        runs in this process."""
        return (nid - FIRST_NODE) % self.workers

    def _local(self, nid: int) -> bool:
        return self.in_cloud and self.owner(nid) == 0

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Send every message to its node's worker and return: the workers compute while the
        cloud goes on (`pull_messages` runs this process's share, then takes the replies in
        push order, so faults and the tap see them as InProcessGrid's do)."""
        self._check_open()
        self._complete()  # an earlier push not pulled yet: its replies first
        ids, delivered, local = [], [], []
        for msg in messages:
            self._pushed += 1
            mid = f"inprocess-{self._pushed}"
            msg.metadata.__dict__["_message_id"] = mid  # as Flower's Grids do on push
            ids.append(mid)
            fault = self._fault(msg)
            if fault == "dropout":  # the node is offline this round: it never sees the message
                continue
            nid = msg.metadata.dst_node_id
            if self._local(nid):
                local.append((mid, msg))
            else:
                self._send(nid, ("call", nid, self.node_config_of(nid), to_bytes(msg)))
            delivered.append((mid, msg, fault))
        self._inflight = (delivered, local)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self._complete()
        return super().pull_messages(message_ids)

    def _complete(self) -> None:
        """Finish the pushed messages: this process's share, then every reply in push order."""
        if self._inflight is None:
            return
        (delivered, local), self._inflight = self._inflight, None
        answered = {}
        for mid, msg in local:  # the other shares compute meanwhile
            start = time.perf_counter()
            answered[mid] = self._call(msg)
            self.busy[0] += time.perf_counter() - start
        for mid, msg, fault in delivered:
            reply = answered.pop(mid, None)
            if reply is None:
                reply = from_bytes(self._receive(msg.metadata.dst_node_id))
            reply = self._arrived(msg, reply, fault)
            if reply is not None:
                self._replies[mid] = reply

    def node_state_keys(self, nid: int) -> list[str]:
        """The record names node `nid` keeps in its context now (in its worker)."""
        self._check_open()
        self._complete()  # its pipe answers in order: the pushed calls' replies come first
        if self._local(nid):
            return sorted(self.contexts[nid].state.keys()) if nid in self.contexts else []
        self._send(nid, ("state", nid))
        return self._receive(nid)

    def worker_pid(self, nid: int) -> int | None:
        """The process id of node `nid`'s worker (None: it runs in this process)."""
        proc = self._procs.get(self.owner(nid))
        return None if proc is None else proc.pid

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' ids, by share (the cloud's own share has none)."""
        return [proc.pid for _, proc in sorted(self._procs.items())]

    def _send(self, nid: int, item: tuple) -> None:
        w = self.owner(nid)
        try:
            self._requests[w].send(item)
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            self._fail(w, nid, f"could not be reached ({exc})")

    def _receive(self, nid: int):
        w = self.owner(nid)
        conn, proc = self._reply_conns[w], self._procs[w]
        while True:
            if conn in wait([conn, proc.sentinel]):
                try:
                    status, payload, seconds = conn.recv()
                except (EOFError, OSError):
                    self._fail(w, nid, "closed its pipe")
                break
            if not proc.is_alive():
                self._fail(w, nid, "died")
        self.busy[w] += seconds
        if status != "ok":
            self._fail(w, nid, f"failed outside the ClientApp:\n{payload}")
        return payload

    def _fail(self, w: int, nid: int, what: str) -> None:
        proc = self._procs[w]
        proc.join(1.0)
        code = proc.exitcode
        self._broken = (f"client worker process {w} (pid {proc.pid}) {what} while serving node "
                        f"{nid} (client {nid - FIRST_NODE})"
                        + (f"; exit code {code}" if code is not None else ""))
        self.close()
        raise UnikdError(self._broken)

    def _check_open(self) -> None:
        if self._broken is not None:
            raise UnikdError(f"the worker grid is broken: {self._broken}")
        if not self._finalizer.alive:
            raise UnikdError("the worker grid is closed")

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        self._finalizer()

    def __enter__(self) -> WorkerGrid:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
