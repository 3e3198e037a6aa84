"""A Flower Grid that runs the ClientApp in this process: no Ray, no network.

Messages still go through Flower's protobuf serialisation both ways, so what the harness
measures and checks is what a real transport would carry. The ClientApp is passed in (loaded by
its component reference, as Flower's runtime does), so the cloud package imports no edge code.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto

log = logging.getLogger(__name__)

ErrorCode = 0  # flwr's generic client-app exception code


def load_component(ref: str):
    """'package.module:attr' -> the object (e.g. the ClientApp)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity  # internal; see flower-notes §4.4

    if getattr(TaskIdentity, "_run_id", None) is None:
        TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1


class InProcessGrid:
    """Implements the parts of `flwr.serverapp.Grid` the cloud uses."""

    def __init__(self, client_app, num_nodes: int, node_config: Callable[[int], dict] | None = None,
                 tap: Callable[[Message, Message], None] | None = None):
        _identity()
        self.client_app = client_app
        self.tap = tap  # sees every (request, reply) pair: used by the wire-manifest test
        self.node_ids = [1000 + i for i in range(num_nodes)]
        self.contexts = {
            nid: Context(run_id=1, node_id=nid,
                         node_config=(node_config(i) if node_config else
                                      {"partition-id": i, "num-partitions": num_nodes}),
                         state=RecordDict(), run_config={})
            for i, nid in enumerate(self.node_ids)}
        self.online = set(self.node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.node_ids if n in self.online]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            wire_msg = message_from_proto(message_to_proto(msg))  # what a transport would deliver
            try:
                reply = self.client_app(wire_msg, self.contexts[nid])
            except Exception as exc:  # the client's failure becomes an error reply, as in Flower
                log.debug("node %s raised", nid, exc_info=True)
                reply = Message(Error(code=ErrorCode, reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=wire_msg)
            reply = message_from_proto(message_to_proto(reply))
            if self.tap is not None:
                self.tap(msg, reply)
            replies.append(reply)
        return replies
