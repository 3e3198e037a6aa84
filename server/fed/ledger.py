"""Bytes on the wire, per round, per client, per record, both directions."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.common.serde import recorddict_to_proto


def record_bytes(content: RecordDict) -> dict[str, int]:
    """Serialized protobuf size of each record: what the transport actually carries."""
    return {k: recorddict_to_proto(RecordDict({k: r})).ByteSize() for k, r in content.items()}


@dataclass
class Ledger:
    rows: list[dict] = field(default_factory=list)

    def add_round(self, rnd: int, sent: dict[int, RecordDict], replies: list[Message]) -> None:
        sizes: dict[int, dict[str, int]] = {}  # nodes sharing a payload share its sizes
        for node, content in sent.items():
            if id(content) not in sizes:
                sizes[id(content)] = record_bytes(content)
            for rec, n in sizes[id(content)].items():
                self.rows.append({"round": rnd, "node": node, "direction": "down",
                                  "record": rec, "bytes": n})
        for r in replies:
            if r.has_error():
                continue
            for rec, n in record_bytes(r.content).items():
                self.rows.append({"round": rnd, "node": r.metadata.src_node_id,
                                  "direction": "up", "record": rec, "bytes": n})

    def round_totals(self, rnd: int) -> dict[str, float]:
        rows = [r for r in self.rows if r["round"] == rnd]
        nodes = {r["node"] for r in rows} or {0}
        down = sum(r["bytes"] for r in rows if r["direction"] == "down")
        up = sum(r["bytes"] for r in rows if r["direction"] == "up")
        return {"bytes_down": down, "bytes_up": up,
                "bytes_down_per_client": down / len(nodes), "bytes_up_per_client": up / len(nodes)}

    def total_mb(self) -> float:
        return sum(r["bytes"] for r in self.rows) / 1e6
