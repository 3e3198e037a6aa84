"""Scale of the in-process federation: round time and peak memory.

Issue 4 (every client every round): each client count runs in a fresh process (so peak RSS is
its own), on real HAR 2->11 split IID over K clients, with a fixed teacher checkpoint so only
UNI-KD rounds are timed.

    python bench/fed_scale.py --data ../shared/data/HAR --clients 10,30,100 \
        --out bench/results/fed_scale.json

Issue 27 (cross-device): a population of P registered simulated clients (`fed.partition:
population:8`, each client 8 windows of HAR subject 11 drawn for it alone), a seeded cohort of
C per round (`fed.clients_per_round`), evaluation on a sample of 50. Each P,C in a fresh
process; per round its wall time and its CPU time (this process, one torch thread: what the
round costs whatever else the machine runs), the count query at the start, peak RSS.

    python bench/fed_scale.py --data ../shared/data/HAR --population 1000:50,1000:100,\
        10000:100,100000:100 --rounds 10 --out bench/results/fed_scale_cohort.json

`--workers N` runs the clients in N processes as `fed.workers` does (the cloud's included).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def one(data: str, clients: int, rounds: int, teacher: str) -> dict:
    import torch

    from server.fed.harness import InProcessGrid, load_component
    from server.fed.rounds import federate
    from shared.config import load_config
    from shared.unikd.metrics import median

    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.path={data}", "data.dataset=HAR", "data.scenario=2->11",
                             f"fed.clients={clients}", f"fed.rounds={rounds}",
                             f"teacher.checkpoint={teacher}"])
    grid = InProcessGrid(load_component("client.node.client_app:app"), clients)
    t0 = time.perf_counter()
    res = federate(grid, cfg, progress=False)
    wall = time.perf_counter() - t0
    secs = [r["seconds"] for r in res.rounds]
    return {"clients": clients, "rounds": len(secs), "round_seconds_median": median(secs),
            "round_seconds_mean": statistics.mean(secs), "wall_seconds": wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bytes_up_per_client_round": median(r["bytes_up_per_client"]
                                                           for r in res.rounds),
            "bytes_down_per_client_round": median(r["bytes_down_per_client"]
                                                             for r in res.rounds)}


def one_population(data: str, population: int, cohort: int, rounds: int, teacher: str,
                   workers: int = 1) -> dict:
    import contextlib

    import torch

    from server.fed import rounds as fed_rounds
    from server.fed.harness import InProcessGrid, load_component
    from server.fed.worker_grid import WorkerGrid
    from shared.config import load_config
    from shared.unikd.metrics import median

    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.path={data}", "data.dataset=HAR", "data.scenario=2->11",
                             f"fed.clients={population}", f"fed.clients_per_round={cohort}",
                             "fed.partition=population:8", "fed.eval_clients=50",
                             f"fed.rounds={rounds}", f"teacher.checkpoint={teacher}"])
    cpu, query = [], []
    run_round, query_counts = fed_rounds.run_round, fed_rounds.query_counts

    def timed_round(fed, rnd):  # CPU seconds of this process over the whole round
        t = time.process_time()
        out = run_round(fed, rnd)
        cpu.append(time.process_time() - t)
        return out

    def timed_query(*args, **kw):
        t = time.perf_counter()
        out = query_counts(*args, **kw)
        query.append(time.perf_counter() - t)
        return out

    fed_rounds.run_round, fed_rounds.query_counts = timed_round, timed_query
    app = "client.node.client_app:app"
    # workers > 1: the product's default layout (fed.workers), the cohort's clients spread over
    # worker processes; the CPU column is then this (the cloud's) process alone
    grid = (WorkerGrid(app, population, workers) if workers > 1
            else InProcessGrid(load_component(app), population))
    t0 = time.perf_counter()
    with grid if workers > 1 else contextlib.nullcontext():
        res = fed_rounds.federate(grid, cfg, progress=False)
        wall = time.perf_counter() - t0
        worker_rss = [peak_rss_mb(pid) for pid in grid.worker_pids] if workers > 1 else []
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    secs = [r["seconds"] for r in res.rounds]
    return {"population": population, "cohort": cohort, "workers": workers,
            "rounds": len(secs),
            "round_seconds_median": median(secs), "round_seconds_max": max(secs),
            "round_cpu_seconds_median": median(cpu), "round_cpu_seconds_max": max(cpu),
            "count_query_seconds": sum(query), "wall_seconds": wall,
            "contexts_held": len(grid.contexts),  # with workers: the cloud's share only
            "peak_rss_mb": own_rss, "worker_peak_rss_mb": worker_rss,
            "total_peak_rss_mb": own_rss + sum(worker_rss),  # an upper bound: peaks summed
            "load_average_1min": __import__("os").getloadavg()[0],
            "final_mf1": res.final.get("mf1")}


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident set (Linux /proc VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def make_teacher(data: str, path: Path) -> None:
    import torch

    from server.central.teacher import save_teacher, train_teacher
    from shared.config import load_config
    from shared.data.scenario import load_scenario

    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.path={data}", "data.dataset=HAR", "data.scenario=2->11",
                             "teacher.epochs=10"])
    data_ = load_scenario(cfg.data)
    save_teacher(path, train_teacher(cfg, data_, progress=False), cfg, data_)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/HAR")
    ap.add_argument("--clients", default="10,30,100")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", default="bench/results/fed_scale.json")
    ap.add_argument("--population", help="cross-device: POPULATION:COHORT,... (issue 27)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-population", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1,
                    help="cross-device: client processes (fed.workers; 1 = this process only)")
    ap.add_argument("--teacher", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = str(Path(args.data).resolve())
    if args.child:
        print(json.dumps(one(data, args.child, args.rounds, args.teacher)))
        return
    if args.child_population:
        pop, cohort = map(int, args.child_population.split(":"))
        print(json.dumps(one_population(data, pop, cohort, args.rounds, args.teacher,
                                        args.workers)))
        return
    teacher = Path(args.out).with_suffix(".teacher.pt")
    if not teacher.exists():
        make_teacher(data, teacher)
    if args.population:
        population_rows(args, data, teacher)
        return
    rows = []
    for k in map(int, args.clients.split(",")):
        out = subprocess.run([sys.executable, __file__, "--data", data, "--child", str(k),
                              "--rounds", str(args.rounds), "--teacher", str(teacher)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"),
                                          "machine": "2-core CPU, 1 torch thread, in-process Grid",
                                          "rows": rows}, indent=2))


def population_rows(args, data: str, teacher: Path) -> None:
    rows = []
    for spec in args.population.split(","):
        out = subprocess.run([sys.executable, __file__, "--data", data, "--child-population",
                              spec, "--rounds", str(args.rounds), "--teacher", str(teacher),
                              "--workers", str(args.workers)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"2-core Xeon box, 1 torch thread, in-process engine, {args.workers} "
                       "client process(es); each row's load_average_1min says how busy",
            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
