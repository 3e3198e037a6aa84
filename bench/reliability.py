"""Issue 6: federated UNI-KD on real HAR under faults vs the clean run.

Faulty: 30% of the nodes drop out per round and 10% of the replies are corrupted (NaN, wrong
shape, huge norm or stale round, drawn per (seed, round, node)); run with the plain mean and with
`norm-bounded:3`. Records the final target MF1 and the count of rejected updates.

    python bench/reliability.py --data ../shared/data/HAR --epochs 10 \
        --out bench/results/reliability.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from privacy import MAIN5, TEACHERS

SETTINGS = {
    "clean": [],
    "faulty-mean": ["fed.dropout=0.3", "fed.corrupt_fraction=0.1"],
    "faulty-norm-bounded": ["fed.dropout=0.3", "fed.corrupt_fraction=0.1",
                            "fed.aggregator=norm-bounded:3"],
}


def one(data: str, scenario: str, setting: str, clients: int, epochs: int, seed: int) -> dict:
    import torch

    from server.fed.harness import InProcessGrid, load_component
    from server.fed.rounds import federate
    from shared.config import load_config

    torch.set_num_threads(1)
    src, trg = scenario.split("->")
    cfg = load_config(None, [f"data.path={data}", "data.dataset=HAR", f"data.scenario={scenario}",
                             f"fed.clients={clients}", f"distill.epochs={epochs}", f"seed={seed}",
                             f"teacher.checkpoint={TEACHERS / f'{src}to{trg}_seed{seed}.pt'}",
                             *SETTINGS[setting]])
    grid = InProcessGrid(load_component("client.node.client_app:app"), clients)
    t0 = time.perf_counter()
    res = federate(grid, cfg, progress=False)
    faults: dict[str, int] = {}
    for f in grid.fault_log:
        faults[f["fault"]] = faults.get(f["fault"], 0) + 1
    planned = cfg.fed.rounds or res.cloud.clock.total
    return {"scenario": scenario, "setting": setting, "clients": clients, "seed": seed,
            "epochs": epochs, "rounds_planned": planned, "rounds_applied": len(res.rounds),
            "mf1": res.final.get("mf1"), "acc": res.final.get("acc"),
            "rejected": len(res.rejected), "faults_injected": faults,
            "mean_clients_per_round": (sum(r["clients"] for r in res.rounds) / len(res.rounds)
                                       if res.rounds else 0),
            "wall_seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/HAR")
    ap.add_argument("--scenarios", default=",".join(MAIN5))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/reliability.json")
    args = ap.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text())["runs"] if out.is_file() else []
    done = {(r["scenario"], r["setting"]) for r in rows}
    for scenario in args.scenarios.split(","):
        for setting in args.settings.split(","):
            if (scenario, setting) in done:
                continue
            row = one(args.data, scenario, setting, args.clients, args.epochs, args.seed)
            print(json.dumps(row), flush=True)
            rows.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"benchmark": "reliability", "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
