"""The ClientApp mod that unpacks a packed message on arrival and packs the reply on the way out.

The handlers see and return ordinary records: every handler runs `wire.check_outgoing` on its
unpacked reply before returning, and only then does this mod fold the reply's ArrayRecords into
one array (shared/protocol/packing.py). An unpacked message passes through untouched, so a cloud
with `fed.pack=false` gets unpacked replies.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client.node.node_config import read_node_config
from shared.errors import UnikdError
from shared.protocol.packing import PackError, is_packed, pack_content, unpack_content


def packing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if not msg.has_content() or not is_packed(msg.content):
        return call_next(msg, context)
    try:
        content = unpack_content(msg.content)
    except PackError as err:
        raise UnikdError(f"client {read_node_config(context.node_config).client_id}, round "
                         f"{msg.metadata.group_id}: the cloud's message does not unpack: {err}"
                         ) from None
    reply = call_next(Message(metadata=msg.metadata, content=content), context)
    if reply.has_content():
        reply.content = pack_content(reply.content)
    return reply
