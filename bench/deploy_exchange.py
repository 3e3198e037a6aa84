"""Issue 12: the deployed message exchange, before vs after the edge-process changes.

Same cloud both ways (Caddy proxy + loopback SuperLink, TLS + node auth, the cloud SuperExec's
task poll at 0.1 s) and 2 edges on 127.0.0.1 holding the simulator's windows; only the edge
process differs:

  stock  Flower's own path: `flower-supernode` (subprocess isolation), its SuperExec polling
         every 1 s, a fresh `flwr-clientapp` (re-importing torch) per message, 3 s idle poll,
         1..10 s object-pull backoff. Unsigned bundles (no executor to check them).
  ours   `unikd edge`: our launcher (node poll 0.1 s, backoff 0.05..0.5 s) and the warm
         executor (task poll 0.05 s, fork per task, signature checked). Signed bundles.

A run of R rounds is 1 count query + R x (train + evaluate) exchanges; the per-exchange time is
the ServerApp's federate wall time divided by the exchanges one edge served (counted in its
log). Reported: medians over repeats, and every run. The machine is shared: other engineers'
jobs load its 2 cores, so absolute numbers move from run to run; modes alternate to share it.

    python bench/deploy_exchange.py --repeats 2 --rounds 2
    python bench/deploy_exchange.py --modes ours --rounds 10 --repeats 3   # idle-box target

Besides the federate-wall / exchanges figure, each run reports its per-round seconds from the
run folder's rounds.csv (one train exchange plus the cloud's source step, timed inside the
ServerApp), and the same config is run in-process (`fed.engine=inprocess`, Ray-free harness) in
the same invocation: the ratio deployed / in-process per round is the transport's cost.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.deploy_walltime import edge_data  # noqa: E402
from client.node.supernode import (EdgeConfig, EdgeProcess, edge_env, start_edge,  # noqa: E402
                                   supernode_command)
from server.deploy.certs import make_node_key  # noqa: E402
from server.deploy.cloud_config import LINK_STATES, CloudConfig  # noqa: E402
from server.deploy.run_overrides import config_overrides  # noqa: E402
from server.deploy.submit import submit  # noqa: E402
from server.deploy.superlink import start_cloud  # noqa: E402
from shared.platform.app_signing import generate_key as generate_app_key  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.platform.flower_tools import flwr_tool  # noqa: E402
from shared.unikd.metrics import median  # noqa: E402
from shared.platform.processes import free_port, group_members  # noqa: E402


def stock_edge(cfg: EdgeConfig, log: Path) -> EdgeProcess:
    """Flower's own SuperNode with the same arguments, minus our launcher."""
    cmd = supernode_command(cfg)
    cmd = [flwr_tool("flower-supernode"), *cmd[cmd.index("--") + 1:]]
    with open(log, "ab") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=edge_env(cfg),
                                 start_new_session=True, stdin=subprocess.DEVNULL,
                                 cwd=str(cfg.home))
    return EdgeProcess(popen, log)


def one_run(root: Path, mode: str, overrides: list[str], clients: int,
            link_state: str = "disk", timeout: float = 900, polls: dict | None = None) -> dict:
    """polls: EdgeConfig's node_poll / task_poll, if not the shipped ones."""
    t0 = time.perf_counter()
    cloud = start_cloud(CloudConfig(root / "cloud", host="127.0.0.1", port=free_port(),
                                    link_port=free_port(), dashboard_port=free_port(),
                                    dev_certs=True,
                                    names=["localhost", "127.0.0.1"], link_state=link_state))
    app_pub = generate_app_key(root / "app.key")
    edges, groups = [], set(cloud.groups)
    try:
        cli = cloud.cli(sign_key=root / "app.key" if mode == "ours" else None)
        for i in range(clients):
            priv, pub = make_node_key(cloud.cfg.certs, f"edge-{i}")
            cli.register(pub, f"edge-{i}")
            cfg = EdgeConfig(cloud.address, edge_data(root, i, clients, overrides),
                             ca=cloud.cfg.paths.ca_crt, key=priv, client_id=i,
                             port=free_port(), home=root / f"edge-{i}", app_key=app_pub,
                             **(polls or {}))
            log = root / f"edge-{i}.log"
            e = start_edge(cfg, log) if mode == "ours" else stock_edge(cfg, log)
            edges.append(e)
            groups.add(e.pid)
        while len(cli.online_nodes()) < clients:
            time.sleep(0.2)
        t_ready = time.perf_counter()
        res = submit(cli, config_overrides(None, overrides), root / "runs",
                     state_dir=cloud.cfg.state_dir, timeout=timeout)
        t_done = time.perf_counter()
        assert res.ok, (res.run_dir / "server.log").read_text()
        summary = json.loads((res.run_dir / "results.json").read_text())
        exchanges = edges[0].output().count("Receiving:")
    finally:
        for e in edges:
            e.stop()
        cloud.stop()
        groups |= cloud.groups
    assert not any(group_members(g) for g in groups), "processes left behind"
    round_secs = round_seconds(res.run_dir)
    return {"mode": mode, "link_state": link_state, "exchanges": exchanges,
            "round_seconds": round_secs, "round_seconds_median": median(round_secs),
            "seconds_per_exchange": summary["wall_seconds"] / exchanges,
            "serverapp_federate_seconds": summary["wall_seconds"],
            "submit_to_finished_seconds": t_done - t_ready, "setup_seconds": t_ready - t0,
            "mf1": summary["mf1"], "loadavg_1min": os.getloadavg()[0]}


def round_seconds(run_dir: Path) -> list[float]:
    """Each round's seconds as the ServerApp timed it (train exchange + cloud source step)."""
    with open(run_dir / "rounds.csv", newline="") as f:
        return [float(r["seconds"]) for r in csv.DictReader(f)]


def inprocess_run(root: Path, overrides: list[str]) -> dict:
    """The same config through the Ray-free in-process harness (no network, no polls)."""
    from server.fed.run import run_federate

    cfg = load_config(overrides=[*overrides, "fed.engine=inprocess", f"out={root}"])
    t0 = time.perf_counter()
    run_dir = run_federate(cfg, progress=False)
    wall = time.perf_counter() - t0
    summary = json.loads((run_dir / "results.json").read_text())
    secs = round_seconds(run_dir)
    return {"mode": "inprocess", "round_seconds": secs, "round_seconds_median": median(secs),
            "serverapp_federate_seconds": summary["wall_seconds"], "wall_seconds": wall,
            "rounds": summary["rounds"], "mf1": summary["mf1"]}


def comma_choices(ap: argparse.ArgumentParser, flag: str, text: str,
                  allowed: tuple[str, ...]) -> list[str]:
    """A non-empty comma list of `allowed` values, or an argparse error naming `flag`."""
    chosen = [x for x in text.split(",") if x]
    if not chosen or set(chosen) - set(allowed):
        ap.error(f"{flag}: expected a comma list of {', '.join(allowed)}; got {text!r}")
    return chosen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="stock,ours",
                    help="comma list of edge processes to run: stock, ours")
    ap.add_argument("--link-state", default="disk",
                    help="comma list of SuperLink states to run: disk (state.db), memory")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "deploy_exchange.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from server.central.teacher import save_teacher, train_teacher
    from shared.data.scenario import load_scenario

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="unikd-exchange-bench-"))
    tcfg = load_config(overrides=["teacher.epochs=1"])
    data = load_scenario(tcfg.data)
    save_teacher(work / "teacher.pt", train_teacher(tcfg, data, False, []), tcfg, data)
    overrides = ["fed.clients=2", f"fed.rounds={args.rounds}",
                 f"teacher.checkpoint={work / 'teacher.pt'}"]
    modes = comma_choices(ap, "--modes", args.modes, ("stock", "ours"))
    states = comma_choices(ap, "--link-state", args.link_state, LINK_STATES)
    variants = [(m, st) for m in modes for st in states]
    runs: list[dict] = []
    for r in range(args.repeats):
        for mode, state in variants:  # alternate, so all see the same load on average
            runs.append(one_run(work / f"{mode}-{state}-{r}", mode, overrides, 2, state))
            runs[-1]["variant"] = mode if len(states) == 1 else f"{mode}/{state}"
            print(json.dumps(runs[-1]), flush=True)
        runs.append(inprocess_run(work / f"inprocess-{r}", [*overrides, "fed.clients=2"]))
        print(json.dumps(runs[-1]), flush=True)
    assert len({x["mf1"] for x in runs}) == 1, "the edge paths and in-process disagree"
    keys = ("seconds_per_exchange", "serverapp_federate_seconds", "submit_to_finished_seconds",
            "setup_seconds")
    for x in runs:
        x.setdefault("variant", x["mode"])
    names = list(dict.fromkeys(x["variant"] for x in runs if x["mode"] != "inprocess"))
    med = {m: {k: median(x[k] for x in runs if x["variant"] == m) for k in keys}
           for m in names}
    for m in [*names, "inprocess"]:  # the median over all rounds of all runs of a variant
        med.setdefault(m, {})["round_seconds_median"] = median(
            s for x in runs if x["variant"] == m for s in x["round_seconds"])
    for m in names:
        med[m]["round_ratio_to_inprocess"] = (med[m]["round_seconds_median"]
                                              / med["inprocess"]["round_seconds_median"])
    report = {
        "what": f"{args.rounds}-round FedUNI-KD, 2 edges on 127.0.0.1, TLS + node auth + "
                "proxy; stock Flower edge process vs our launcher + warm executor",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg(),
                    "note": "shared 2-core machine; see loadavg; medians of few runs"},
        "repeats": args.repeats, "median": med,
        "speedup_per_exchange": (med["stock"]["seconds_per_exchange"]
                                 / med["ours"]["seconds_per_exchange"]
                                 if {"stock", "ours"} <= set(med) else None),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median", "speedup_per_exchange")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
