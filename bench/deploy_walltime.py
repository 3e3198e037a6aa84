"""Issue 5: wall time of a deployed 2-round FedUNI-KD vs the same run simulated.

Deployment: a real SuperLink + 2 SuperNodes on 127.0.0.1 with TLS and node authentication (the
same setup as tests/test_deploy.py); each edge holds exactly the windows the simulator gives
its client, so all three runs must end with the same numbers (checked). Simulation: the
in-process harness and Flower's Ray engine. A fixed teacher checkpoint (1 epoch) is used so
only the UNI-KD rounds (plus count query and evaluation) are timed.

    python bench/deploy_walltime.py --repeats 2 --out bench/results/deploy_walltime.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from client.node.supernode import EdgeConfig, start_edge  # noqa: E402
from client.node.local_data import write_device_folder  # noqa: E402
from server.deploy.certs import make_node_key  # noqa: E402
from server.deploy.cloud_config import CloudConfig  # noqa: E402
from server.deploy.run_overrides import config_overrides  # noqa: E402
from server.deploy.submit import submit  # noqa: E402
from server.deploy.superlink import start_cloud  # noqa: E402
from shared.platform.app_signing import generate_key as generate_app_key  # noqa: E402
from shared.platform.processes import free_port, group_members  # noqa: E402
from shared.unikd.metrics import median  # noqa: E402
from shared.config import load_config  # noqa: E402


def edge_data(root: Path, client: int, clients: int, overrides: list[str]) -> Path:
    return write_device_folder(root, client, clients, load_config(overrides=overrides))


def deployed(root: Path, overrides: list[str], clients: int) -> dict:
    t0 = time.perf_counter()
    cloud = start_cloud(CloudConfig(root / "cloud", host="127.0.0.1", port=free_port(),
                                    link_port=free_port(), dashboard_port=free_port(),
                                    names=["localhost", "127.0.0.1"],
                                    dev_certs=True))
    edges, groups = [], list(cloud.groups)
    app_pub = generate_app_key(root / "app.key")
    try:
        cli = cloud.cli(sign_key=root / "app.key")
        for i in range(clients):
            priv, pub = make_node_key(cloud.cfg.certs, f"edge-{i}")
            cli.register(pub, f"edge-{i}")
            e = start_edge(EdgeConfig(cloud.address, edge_data(root, i, clients, overrides),
                                      ca=cloud.cfg.paths.ca_crt, key=priv, client_id=i,
                                      port=free_port(), home=root / f"edge-{i}",
                                      app_key=app_pub),
                           root / f"edge-{i}.log")
            edges.append(e)
            groups.append(e.pid)
        while len(cli.online_nodes()) < clients:
            time.sleep(0.2)
        t_ready = time.perf_counter()
        res = submit(cli, config_overrides(None, overrides), root / "runs",
                     state_dir=cloud.cfg.state_dir, timeout=600)
        t_done = time.perf_counter()
        assert res.ok, (res.run_dir / "server.log").read_text()
        summary = json.loads((res.run_dir / "results.json").read_text())
    finally:
        for e in edges:
            e.stop()
        cloud.stop()
    assert not any(group_members(g) for g in groups), "processes left behind"
    return {"setup_seconds": t_ready - t0, "submit_to_finished_seconds": t_done - t_ready,
            "serverapp_federate_seconds": summary["wall_seconds"],
            "total_seconds": time.perf_counter() - t0, "mf1": summary["mf1"],
            "acc": summary["acc"], "rounds": summary["rounds"],
            "bytes_up": summary["bytes_up"], "bytes_down": summary["bytes_down"]}


def simulated(overrides: list[str], engine: str, root: Path) -> dict:
    from server.fed.run import run_inprocess, run_ray

    cfg = load_config(overrides=overrides + [f"fed.engine={engine}"])
    t0 = time.perf_counter()
    res = run_inprocess(cfg, progress=False) if engine == "inprocess" else run_ray(cfg, root)
    return {"total_seconds": time.perf_counter() - t0, "federate_seconds": res.wall_seconds,
            "mf1": res.final["mf1"], "acc": res.final["acc"], "rounds": len(res.rounds)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "deploy_walltime.json"))
    args = ap.parse_args()
    from shared.platform.flower_tools import FLWR_ENV

    os.environ.update(FLWR_ENV)
    torch.set_num_threads(1)

    from server.central.teacher import save_teacher, train_teacher
    from shared.data.scenario import load_scenario

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="unikd-deploy-bench-"))
    tcfg = load_config(overrides=["teacher.epochs=1"])
    data = load_scenario(tcfg.data)
    teacher = work / "teacher.pt"
    save_teacher(teacher, train_teacher(tcfg, data, False, []), tcfg, data)
    overrides = [f"fed.clients={args.clients}", f"fed.rounds={args.rounds}",
                 f"teacher.checkpoint={teacher}", f"out={work / 'sim-runs'}"]

    runs: dict[str, list[dict]] = {"deployed_tls_auth": [], "sim_inprocess": [], "sim_ray": []}
    for r in range(args.repeats):
        runs["sim_inprocess"].append(simulated(overrides, "inprocess", work))
        runs["sim_ray"].append(simulated(overrides, "ray", work / f"ray-{r}"))
        runs["deployed_tls_auth"].append(deployed(work / f"deploy-{r}", overrides, args.clients))
        print(json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)

    mf1 = {run["mf1"] for rs in runs.values() for run in rs}
    assert len(mf1) == 1, f"the three placements disagree: {mf1}"
    med = {k: median(x["total_seconds"] for x in v) for k, v in runs.items()}
    dep = runs["deployed_tls_auth"]
    report = {
        "what": f"{args.rounds}-round FedUNI-KD, {args.clients} clients, SYNTH 0->1, fixed "
                f"teacher; deployment = SuperLink + {args.clients} SuperNodes on 127.0.0.1, "
                f"TLS + node auth, subprocess isolation",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": os.getloadavg(),
                    "note": "a shared machine: other jobs' load inflates all three timings"},
        "repeats": args.repeats, "same_numbers": True, "mf1": mf1.pop(),
        "median_total_seconds": med,
        "median_deployed_breakdown": {
            k: median(x[k] for x in dep)
            for k in ("setup_seconds", "submit_to_finished_seconds",
                      "serverapp_federate_seconds")},
        "deployed_over_inprocess": med["deployed_tls_auth"] / med["sim_inprocess"],
        "deployed_over_ray": med["deployed_tls_auth"] / med["sim_ray"],
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_total_seconds", "median_deployed_breakdown")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
