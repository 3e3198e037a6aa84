"""Issue 6: target MF1 of the federated student against the client-level DP budget epsilon.

Real UCI-HAR main-5 scenarios, K clients IID, one seed, teachers reused from the centralized
benchmark (bench/out/har-central/teachers/<src>to<trg>_seed<seed>.pt, via teacher.checkpoint), so
only the UNI-KD rounds run. epsilon=inf is the run without DP. Results are appended to the JSON
after every run, so an interrupted benchmark keeps what it measured.

    python bench/privacy.py --data ../shared/data/HAR --epochs 10 --mode central \
        --out bench/results/privacy.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

MAIN5 = ["2->11", "7->13", "12->16", "9->18", "6->23"]
TEACHERS = Path("bench/out/har-central/teachers")


def one(data: str, scenario: str, eps: float, mode: str, clients: int, epochs: int, seed: int,
        clip: float, extra: list[str]) -> dict:
    import torch

    from server.fed.harness import InProcessGrid, load_component
    from server.fed.rounds import federate
    from shared.config import load_config

    torch.set_num_threads(1)
    src, trg = scenario.split("->")
    sets = [f"data.path={data}", "data.dataset=HAR", f"data.scenario={scenario}",
            f"fed.clients={clients}", "fed.partition=iid", f"distill.epochs={epochs}",
            f"seed={seed}", f"teacher.checkpoint={TEACHERS / f'{src}to{trg}_seed{seed}.pt'}",
            *extra]
    if math.isfinite(eps):
        sets += [f"fed.dp={mode}", f"fed.dp_epsilon={eps}", f"fed.dp_clip={clip}"]
    cfg = load_config(None, sets)
    t0 = time.perf_counter()
    res = federate(InProcessGrid(load_component("client.node.client_app:app"), clients), cfg,
                   progress=False)
    last = res.rounds[-1] if res.rounds else {}
    return {"scenario": scenario, "epsilon": eps if math.isfinite(eps) else "inf",
            "mode": mode if math.isfinite(eps) else "off", "clients": clients, "seed": seed,
            "epochs": epochs, "rounds": len(res.rounds), "mf1": res.final.get("mf1"),
            "acc": res.final.get("acc"), "epsilon_spent": last.get("dp_epsilon"),
            "noise_multiplier": last.get("dp_noise_multiplier"), "clip": clip,
            "delta": cfg.fed.dp_delta, "wall_seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/HAR")
    ap.add_argument("--scenarios", default=",".join(MAIN5))
    ap.add_argument("--epsilons", default="inf,8,3,1")
    ap.add_argument("--mode", default="central", choices=["central", "local"])
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--out", default="bench/results/privacy.json")
    args = ap.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text())["runs"] if out.is_file() else []
    done = {(r["scenario"], str(r["epsilon"]), r["mode"]) for r in rows}
    for scenario in args.scenarios.split(","):
        for e in args.epsilons.split(","):
            eps = float(e)
            key = (scenario, "inf" if not math.isfinite(eps) else eps,
                   args.mode if math.isfinite(eps) else "off")
            if (key[0], str(key[1]), key[2]) in done:
                continue
            row = one(args.data, scenario, eps, args.mode, args.clients, args.epochs, args.seed,
                      args.clip, args.set)
            print(json.dumps(row), flush=True)
            rows.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"benchmark": "privacy", "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
