"""One packed array per message: every ArrayRecord of a message travels as ONE Flower object.

Flower 1.42 makes every Array of a message its own content-addressed object and its own HTTPS
request (a train message is 52 objects, 74 with the teacher). `pack_content` moves all the
ArrayRecords of a RecordDict into a single Array under the key `wire.PACKED`; ConfigRecords and
MetricRecords stay as they are. `unpack_content` restores the original RecordDict: same keys in
the same order, and every Array's dtype, shape, serialisation type and bytes exactly as they were
(the Array's own serialised bytes are copied, not re-encoded), so the numbers stay bit-identical.

Blob layout (little-endian): MAGIC, u32 header length, the header (UTF-8 JSON), then the arrays'
bytes back to back. The header lists, per record, each array's name, dtype, shape, stype and
byte count; the payload must be exactly their sum, so nothing can ride along unlisted.
"""

from __future__ import annotations

import json
import struct

from flwr.app import Array, ArrayRecord, RecordDict

from shared.errors import UnikdError
from shared.protocol import wire

MAGIC = b"UNIKDPK1"
STYPE = "unikd.packed.v1"  # the packed Array's serialisation type: our bytes, not numpy's


class PackError(UnikdError):
    """A packed record that does not decode (truncated, tampered with, or not ours)."""


def is_packed(content: RecordDict) -> bool:
    return wire.PACKED in content


def pack_content(content: RecordDict) -> RecordDict:
    """A RecordDict whose ArrayRecords are folded into one Array (`wire.PACKED`).

    Content without ArrayRecords is returned as is (nothing to gain)."""
    if wire.PACKED in content:
        raise PackError(f"record '{wire.PACKED}' is reserved for the packed arrays")
    array_keys = [k for k, r in content.items() if isinstance(r, ArrayRecord)]
    if not array_keys:
        return content
    header: dict = {"order": list(content.keys()), "records": []}
    chunks: list[bytes] = []
    for key in array_keys:
        entries = []
        for name, arr in content[key].items():
            data = bytes(arr.data)
            entries.append([name, arr.dtype, list(arr.shape), arr.stype, len(data)])
            chunks.append(data)
        header["records"].append({"key": key, "arrays": entries})
    head = json.dumps(header, separators=(",", ":")).encode()
    blob = b"".join([MAGIC, struct.pack("<I", len(head)), head, *chunks])
    out = RecordDict({k: r for k, r in content.items() if not isinstance(r, ArrayRecord)})
    out[wire.PACKED] = ArrayRecord({"blob": Array(dtype="uint8", shape=(len(blob),),
                                                  stype=STYPE, data=blob)})
    return out


def unpack_content(content: RecordDict) -> RecordDict:
    """The RecordDict `pack_content` was given; content without `wire.PACKED` comes back as is."""
    if wire.PACKED not in content:
        return content
    rec = content[wire.PACKED]
    if not isinstance(rec, ArrayRecord) or list(rec.keys()) != ["blob"]:
        raise PackError(f"record '{wire.PACKED}' must be an ArrayRecord with one array 'blob'")
    arr = rec["blob"]
    if arr.stype != STYPE:
        raise PackError(f"packed array has serialisation type '{arr.stype}', expected '{STYPE}'")
    order, records = _decode(bytes(arr.data))
    others = {k: r for k, r in content.items() if k != wire.PACKED}
    clash = set(records) & set(others)
    if clash:
        raise PackError(f"record(s) {sorted(clash)} both packed and unpacked")
    merged = {**others, **records}
    if set(order) != set(merged):
        raise PackError(f"packed header lists records {sorted(order)}, the message holds "
                        f"{sorted(merged)}")
    return RecordDict({key: merged[key] for key in order})  # the sender's order


def _decode(blob: bytes) -> tuple[list[str], dict[str, ArrayRecord]]:
    """(the original record order, the packed ArrayRecords) of a packed blob."""
    if len(blob) < len(MAGIC) + 4 or not blob.startswith(MAGIC):
        raise PackError("packed array does not start with the packing header (not ours)")
    (head_len,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    if start + head_len > len(blob):
        raise PackError(f"packed header claims {head_len} bytes, only {len(blob) - start} left")
    try:
        header = json.loads(blob[start:start + head_len].decode())
        order = [str(k) for k in header["order"]]
        specs = [(str(r["key"]), [(str(n), str(d), tuple(int(s) for s in sh), str(st), int(nb))
                                  for n, d, sh, st, nb in r["arrays"]])
                 for r in header["records"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise PackError(f"packed header is malformed ({type(exc).__name__}: {exc})") from None
    pos = start + head_len
    need = sum(nb for _, arrays in specs for *_, nb in arrays)
    if need != len(blob) - pos:
        raise PackError(f"packed payload is {len(blob) - pos} bytes, the header lists {need}")
    records: dict[str, ArrayRecord] = {}
    for key, arrays in specs:
        if key in records:
            raise PackError(f"record '{key}' packed twice")
        if len({n for n, *_ in arrays}) != len(arrays):
            raise PackError(f"record '{key}' lists an array name twice")
        if any(nb < 0 for *_, nb in arrays):
            raise PackError(f"record '{key}' lists a negative byte count")
        items = {}
        for name, dtype, shape, stype, nbytes in arrays:
            items[name] = Array(dtype=dtype, shape=shape, stype=stype,
                                data=blob[pos:pos + nbytes])
            pos += nbytes
        records[key] = ArrayRecord(items)
    if not set(records) <= set(order) or len(set(order)) != len(order):
        raise PackError("packed header's record order does not cover the packed records")
    return order, records
