"""Issue 26: the federated DANN teacher alone, against its local steps per exchange.

Runs only the count query and the federated teacher phase (in-process Grid, the run's config
plus each variant's --set values), then scores the teacher on the target and source test
splits (a benchmark's measurement: the federation never sees a target label). One JSON row per
(variant, scenario): teacher MF1, exchanges, in-process seconds.

    PYTHONPATH=$PWD python3 bench/teacher_steps.py --out OUT.json \
        --base teacher.ensemble=3 --base distill.reference_compat=true \
        --base distill.cross_kd=expected \
        --variant "edge L=1=fed.local_steps_mode=edge" \
        --variant "both L=10 sqrt=fed.local_steps_mode=both,fed.local_steps=10" \
        [--data ../shared/data/HAR --dataset HAR --scenarios 3->2,10->23]

Without --data: the main job's embedded SYNTH data and scenario (`unikd federate`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def one(base: list[str], sets: list[str], scenario: str | None) -> dict:
    import torch

    from server.fed.cloud import load_source
    from server.fed.harness import InProcessGrid, load_component
    from server.fed.rounds import query_counts, wait_for_nodes
    from server.fed.teacher import federated_dann_teacher
    from server.fed.transport import Sender, TransportOptions
    from shared.config import load_config
    from shared.data.scenario import load_scenario
    from shared.unikd.evaluation import evaluate

    cfg = load_config(None, [*base, *sets, *([f"data.scenario={scenario}"] if scenario else [])])
    torch.set_num_threads(cfg.threads)
    grid = InProcessGrid(load_component("client.node.client_app:app"), cfg.fed.clients)
    start = time.perf_counter()
    source = load_source(cfg)
    nodes = wait_for_nodes(grid, cfg.fed.clients)
    send = Sender(grid, None, TransportOptions.from_fed(cfg.fed))
    counts = query_counts(send, cfg, source, nodes)
    teacher = federated_dann_teacher(send, cfg, source, nodes, sum(counts.values()), False)
    seconds = time.perf_counter() - start
    data = load_scenario(cfg.data)
    return {"scenario": cfg.data.scenario, "seed": cfg.seed,
            "teacher_mf1": evaluate(teacher, data.trg_test, data.spec.classes)["mf1"],
            "teacher_src_mf1": evaluate(teacher, data.src_test, data.spec.classes)["mf1"],
            "exchanges": send.exchanges - 1,  # the teacher's (the count query left out)
            "mode": cfg.fed.local_steps_mode, "teacher_local_steps": cfg.fed.teacher_steps,
            "teacher_server_step": cfg.fed.teacher_step_rule, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--base", action="append", default=[], help="KEY=VALUE for every variant")
    ap.add_argument("--variant", action="append", required=True,
                    help="LABEL=KEY=V,KEY=V (an empty list after = runs the base alone)")
    ap.add_argument("--data", default="")
    ap.add_argument("--dataset", default="")
    ap.add_argument("--scenarios", default="")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    base = [*a.base, f"seed={a.seed}"]
    if a.data:
        base += [f"data.path={a.data}", f"data.dataset={a.dataset}", "fed.clients=5"]
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    for variant in a.variant:
        label, _, sets = variant.partition("=")
        for scenario in (a.scenarios.split(",") if a.scenarios else [None]):
            row = {"label": label, **one(base, [s for s in sets.split(",") if s], scenario)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
