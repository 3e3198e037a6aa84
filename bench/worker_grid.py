"""The in-process simulation with its clients in worker processes (fed.workers, server/fed/
worker_grid.py) against the sequential grid: wall time of a shortened main job (the default
config, teacher.epochs=4, distill.epochs=3) at each worker count, each in a fresh process, with
the box's load average beside every timing. Every setting must give the same evaluations.

    python bench/worker_grid.py                      # workers 1, 2, 3
    python bench/worker_grid.py --workers 1 2 --repeats 2
    python bench/worker_grid.py --full 2             # also the whole main job at 2 workers

Writes bench/results/worker_grid.json (--out to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHORT = ["teacher.epochs=4", "distill.epochs=3"]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def one(workers: int, overrides: list[str]) -> dict:
    """One run in this process (the child's side)."""
    sys.path.insert(0, str(REPO))
    import torch

    from server.fed.run import run_inprocess
    from shared.config import load_config

    torch.set_num_threads(1)
    cfg = load_config(overrides=[*overrides, f"fed.workers={workers}"])
    load_before = loadavg()
    start = time.perf_counter()
    res = run_inprocess(cfg, progress=False)
    wall = time.perf_counter() - start
    sd = res.cloud.nets.state_dict()
    return {"workers": workers, "wall_s": round(wall, 2), "load_before": load_before,
            "load_after": loadavg(), "exchanges": res.exchanges,
            "mf1": [round(e["mf1"], 3) for e in res.evals],
            "mf1_exact": [e["mf1"] for e in res.evals],
            "weights_sum": float(sum(v.double().sum() for v in sd.values()
                                     if v.is_floating_point()))}


def child(workers: int, overrides: list[str]) -> dict:
    """One run in a fresh interpreter (no warm caches carried from an earlier setting)."""
    cmd = [sys.executable, __file__, "--child", str(workers), "--set", *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"workers={workers} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--full", type=int, default=0, help="also time the whole main job at N")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "worker_grid.json"))
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--set", nargs="*", default=SHORT, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.set)))
        return
    runs = []
    for rep in range(args.repeats):
        for w in args.workers:
            r = child(w, SHORT)
            r["repeat"] = rep
            runs.append(r)
            print(f"short job, workers={w}: {r['wall_s']:.1f} s, load {r['load_before']} -> "
                  f"{r['load_after']}, {r['exchanges']} exchanges, MF1 {r['mf1']}", flush=True)
    same = len({json.dumps([r["mf1_exact"], r["weights_sum"], r["exchanges"]])
                for r in runs}) == 1
    print("identical results across settings:", same)
    full = None
    if args.full:
        full = child(args.full, [])
        print(f"full main job, workers={args.full}: {full['wall_s']:.1f} s, load "
              f"{full['load_before']} -> {full['load_after']}, MF1 {full['mf1']}", flush=True)
    result = {"config": SHORT, "cpus": os.cpu_count(), "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs,
              "identical": same, "full_main_job": full}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)
    if not same:
        raise SystemExit("the settings gave different results")


if __name__ == "__main__":
    main()
