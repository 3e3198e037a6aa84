"""Issue 12: Flower objects per message and in-process round time, packed vs unpacked.

Flower 1.42 pushes/pulls every object of a message (message, record dict, each record, each
array, each 5 MiB chunk) as its own HTTPS request; `fed.pack` folds all arrays of a message into
one. This counts the distinct objects of every message of a small in-process federation (as
`flwr.supercore.inflatable.get_all_nested_objects` sees them, i.e. what a Grid pushes) and times
its rounds, once with `fed.pack=false` (before) and once with `fed.pack=true` (after).

    PYTHONPATH=. python bench/transport.py --out bench/results/transport.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path


def objects(msg) -> int:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return len(get_all_nested_objects(msg))


def one(pack: bool, clients: int, rounds: int) -> dict:
    import torch

    from server.fed.harness import InProcessGrid, load_component
    from server.fed.rounds import federate
    from shared.config import load_config
    from shared.protocol import wire
    from shared.protocol.packing import unpack_content

    torch.set_num_threads(1)
    cfg = load_config(None, [f"fed.clients={clients}", f"fed.rounds={rounds}",
                             "distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128",
                             "fed.teacher_placement=edge", f"fed.pack={str(pack).lower()}"])
    grid = InProcessGrid(load_component("client.node.client_app:app"), clients)
    counts: dict[str, list[int]] = defaultdict(list)
    push, pull = grid.push_messages, grid.pull_messages

    def counting_push(messages):
        messages = list(messages)
        for m in messages:
            kind = m.metadata.message_type
            if kind == wire.TRAIN and wire.TEACHER in unpack_content(m.content):
                kind += " (with teacher)"
            counts[f"down {kind}"].append(objects(m))
        return push(messages)

    def counting_pull(ids):
        got = pull(ids)
        for r in got:
            if not r.has_error():
                counts[f"up {r.metadata.message_type}"].append(objects(r))
        return got

    grid.push_messages, grid.pull_messages = counting_push, counting_pull
    t0 = time.perf_counter()
    res = federate(grid, cfg, progress=False)
    wall = time.perf_counter() - t0
    secs = [r["seconds"] for r in res.rounds]
    return {"pack": pack, "clients": clients, "rounds": len(secs),
            "objects_per_message": {k: max(v) for k, v in sorted(counts.items())},
            "round_seconds": secs, "round_seconds_median": statistics.median(secs),
            "wall_seconds": wall, "mf1": res.final.get("mf1")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default="bench/results/transport.json")
    args = ap.parse_args()
    before = one(False, args.clients, args.rounds)
    after = one(True, args.clients, args.rounds)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or '?'}, "
           f"shared 2-core CPU box", "command": "PYTHONPATH=. python bench/transport.py",
           "before_unpacked": before, "after_packed": after,
           "same_mf1": before["mf1"] == after["mf1"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: (v["objects_per_message"], v["round_seconds_median"])
                      for k, v in out.items() if isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
