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


PROBE = """
import time, torch
torch.set_num_threads(1)
x, w = torch.randn(64, 9, 128), torch.randn(64, 9, 5)
t = time.perf_counter()
for _ in range(2000):
    torch.nn.functional.conv1d(x, w, padding=2)
print(time.perf_counter() - t)
"""


def capacity(n: int = 2) -> float:
    """Cores this benchmark actually gets now: n single-threaded loops at once against one
    alone (another session's busy processes take their share whatever their nice value)."""
    def walls(k: int) -> list[float]:
        procs = [subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE,
                                  text=True) for _ in range(k)]
        return [float(p.communicate()[0]) for p in procs]
    one = walls(1)[0]
    return round(n * one / max(walls(n)), 2)


def project(overrides: list[str], shares: list[int], cores: list[int]) -> dict:
    """The sequential grid with every ClientApp call timed, and what W shares of the nodes
    would take on K idle cores: the time outside the calls, plus per exchange the larger of
    the busiest share and the exchange's calls spread over K cores (no IPC costs counted).
    A projection, for a box whose other sessions leave too few cores to time it directly."""
    sys.path.insert(0, str(REPO))
    import torch

    from server.fed.harness import FIRST_NODE, InProcessGrid, load_component
    from server.fed.rounds import federate
    from shared.config import load_config

    class TimedGrid(InProcessGrid):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.calls: list[dict[int, float]] = []

        def push_messages(self, messages):
            self.calls.append({})
            return super().push_messages(messages)

        def _call(self, msg):
            start = time.perf_counter()
            reply = super()._call(msg)
            nid = msg.metadata.dst_node_id
            self.calls[-1][nid] = self.calls[-1].get(nid, 0.0) + time.perf_counter() - start
            return reply

    torch.set_num_threads(1)
    cfg = load_config(overrides=overrides)
    grid = TimedGrid(load_component("client.node.client_app:app"), cfg.fed.clients)
    start = time.perf_counter()
    res = federate(grid, cfg, progress=False)
    wall = time.perf_counter() - start
    in_calls = sum(sum(c.values()) for c in grid.calls)
    out = {"sequential_wall_s": round(wall, 2), "client_calls_s": round(in_calls, 2),
           "mf1": [round(e["mf1"], 3) for e in res.evals], "projected_wall_s": {}}
    for k in cores:
        for w in shares:
            t = wall - in_calls
            for c in grid.calls:
                load = [sum(v for n, v in c.items() if (n - FIRST_NODE) % w == s)
                        for s in range(w)]
                t += max(max(load, default=0.0), sum(load) / k)
            out["projected_wall_s"][f"workers={w},cores={k}"] = round(t, 2)
    return out


def child(workers: int, overrides: list[str]) -> dict:
    """One run in a fresh interpreter (no warm caches carried from an earlier setting)."""
    cmd = [sys.executable, __file__, "--child", str(workers), "--set", *overrides]
    if workers == 0:
        cmd[2:4] = ["--project-child"]
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
    ap.add_argument("--project", action="store_true",
                    help="also project the worker counts' wall times on idle cores from a timed "
                         "sequential run (for a box too busy to time them)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--project-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--set", nargs="*", default=SHORT, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.set)))
        return
    if args.project_child:
        print(json.dumps(project(args.set, [1, 2, 3], [2, 3])))
        return
    runs = []
    cores = capacity()
    print(f"effective cores now: {cores} of {os.cpu_count()}", flush=True)
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
    projection = None
    if args.project:
        projection = child(0, SHORT)
        print(f"projection (sequential run {projection['sequential_wall_s']} s, "
              f"{projection['client_calls_s']} s in ClientApp calls): "
              f"{projection['projected_wall_s']}", flush=True)
    cores_after = capacity()
    print(f"effective cores after: {cores_after}", flush=True)
    result = {"config": SHORT, "cpus": os.cpu_count(), "effective_cores": [cores, cores_after],
              "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs,
              "identical": same, "full_main_job": full, "projection": projection}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)
    if not same:
        raise SystemExit("the settings gave different results")


if __name__ == "__main__":
    main()
