"""Issue 27: a deployed cross-device federation on loopback. 20 registered edges, a cohort of 5.

Caddy proxy + loopback SuperLink with TLS and node authentication, every edge a real `unikd
edge` process (launcher + warm executor, signed bundle) on 127.0.0.1 holding its own windows
(the simulator's client i, written as its device folder) and its own model directory. 19 edges
start before the run; the run (`fed.clients_per_round=5`, `fed.min_available=5`, a fixed teacher
checkpoint under edge placement, `fed.rounds` UNI-KD rounds) is submitted once all 19 are
online. Two edges are killed (SIGKILL to their whole process group) once the cloud has
checkpointed round --kill-at; the 20th edge starts once it has checkpointed round --late-at.

Checked and reported: the run completes; every round's cohort and who answered (the run
folder's cohorts.jsonl); the late edge is drawn and trains only after it joined; the killed
edges answer no round after their death; every surviving edge installed the delivered student
(its model directory's newest version); the wall time, each round's seconds and the MF1.

    python bench/deploy_cross_device.py --out bench/results/deploy_cross_device.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.deploy_exchange import round_seconds  # noqa: E402
from bench.deploy_walltime import edge_data  # noqa: E402
from client.edge_service.delivery import installed_tag  # noqa: E402
from client.node.supernode import EdgeConfig, start_edge  # noqa: E402
from server.deploy.certs import make_node_key  # noqa: E402
from server.deploy.cloud_config import CloudConfig  # noqa: E402
from server.deploy.run_overrides import config_overrides  # noqa: E402
from server.deploy.submit import submit  # noqa: E402
from server.deploy.superlink import start_cloud  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.platform.app_signing import generate_key as generate_app_key  # noqa: E402
from shared.platform.processes import free_port, group_members  # noqa: E402


def checkpointed_round(runs: Path, after: float) -> int:
    """The round of the newest cloud checkpoint written after `after` (0: none yet)."""
    hits = [p for p in runs.glob("submit-*/*/checkpoints/last.pt") if p.stat().st_mtime > after]
    if not hits:
        return 0
    try:
        return int(torch.load(hits[0], map_location="cpu", weights_only=False)["round"])
    except Exception:  # being replaced right now (atomic rename): read it next time
        return 0


def make_teacher(path: Path, overrides: list[str]) -> None:
    from server.central.teacher import save_teacher, train_teacher
    from shared.data.scenario import load_scenario

    cfg = load_config(overrides=[*overrides, "teacher.epochs=2"])
    data = load_scenario(cfg.data)
    save_teacher(path, train_teacher(cfg, data, False, []), cfg, data)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges", type=int, default=20)
    ap.add_argument("--cohort", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--kill", default="3,11", help="client ids killed mid-run")
    ap.add_argument("--kill-at", type=int, default=5, help="kill once this round is checkpointed")
    ap.add_argument("--late-at", type=int, default=10, help="start the last edge after this round")
    ap.add_argument("--round-timeout", type=float, default=60.0,
                    help="fed.round_timeout: a killed edge in a cohort costs the round this much")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "deploy_cross_device.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    killed_ids = [int(k) for k in args.kill.split(",") if k]
    late_id = args.edges - 1
    root = Path(tempfile.mkdtemp(prefix="unikd-cross-device-"))
    teacher = root / "teacher.pt"
    make_teacher(teacher, [])
    overrides = [f"fed.clients={args.edges}", f"fed.clients_per_round={args.cohort}",
                 f"fed.min_available={args.cohort}", f"fed.rounds={args.rounds}",
                 "fed.checkpoint_every=1", f"fed.round_timeout={args.round_timeout}",
                 f"teacher.checkpoint={teacher}"]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    cloud = start_cloud(CloudConfig(root / "cloud", host="127.0.0.1", port=free_port(),
                                    link_port=free_port(), dashboard_port=free_port(),
                                    names=["localhost", "127.0.0.1"], dev_certs=True))
    app_pub = generate_app_key(root / "app.key")
    groups, edges, cfgs, events = set(cloud.groups), {}, {}, []
    box: dict = {}
    try:
        cli = cloud.cli(sign_key=root / "app.key")
        for i in range(args.edges):
            priv, pub = make_node_key(cloud.cfg.certs, f"edge-{i}")
            cli.register(pub, f"edge-{i}")
            cfgs[i] = EdgeConfig(cloud.address, edge_data(root, i, args.edges, overrides),
                                 ca=cloud.cfg.paths.ca_crt, key=priv, client_id=i,
                                 port=free_port(), home=root / f"edge-{i}", app_key=app_pub,
                                 model_dir=root / f"models-{i}")

        def start(i: int) -> None:
            edges[i] = start_edge(cfgs[i], root / f"edge-{i}.log")
            groups.add(edges[i].pid)

        for i in range(args.edges - 1):
            start(i)
        while len(cli.online_nodes()) < args.edges - 1:
            time.sleep(0.5)
        t_ready = time.perf_counter()
        events.append({"event": "online", "edges": args.edges - 1, "seconds": t_ready - t0})
        print(json.dumps(events[-1]), flush=True)

        def run() -> None:
            try:
                box["res"] = submit(cli, config_overrides(None, overrides), root / "runs",
                                    state_dir=cloud.cfg.state_dir, timeout=args.timeout)
            except BaseException as exc:  # reported below
                box["err"] = repr(exc)

        started = time.time()
        thread = threading.Thread(target=run)
        thread.start()
        runs = cloud.cfg.state_dir / "runs"
        killed = late = False
        while thread.is_alive():
            rnd = checkpointed_round(runs, started)
            if not killed and rnd >= args.kill_at:
                for i in killed_ids:
                    os.killpg(edges[i].pid, signal.SIGKILL)
                    edges[i].wait(30)
                killed = True
                events.append({"event": "killed", "clients": killed_ids, "after_round": rnd,
                               "seconds": time.perf_counter() - t_ready})
                print(json.dumps(events[-1]), flush=True)
            if not late and rnd >= args.late_at:
                start(late_id)
                late = True
                events.append({"event": "late edge started", "client": late_id,
                               "after_round": rnd, "seconds": time.perf_counter() - t_ready})
                print(json.dumps(events[-1]), flush=True)
            time.sleep(0.2)
        t_done = time.perf_counter()
    finally:
        for e in edges.values():
            e.stop()
        cloud.stop()
        groups |= cloud.groups
    left = {g: group_members(g) for g in groups if group_members(g)}
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "overrides": overrides, "events": events, "error": box.get("err"),
              "processes_left": {str(k): v for k, v in left.items()}}
    res = box.get("res")
    if res is not None:
        report.update(summarise(res, killed_ids, late_id, events, cfgs))
        report["submit_to_finished_seconds"] = t_done - t_ready
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "cohorts"}, indent=1))
    return 0 if report.get("checks_passed") else 1


def summarise(res, killed_ids: list[int], late_id: int, events: list[dict], cfgs: dict
              ) -> dict:
    run = res.run_dir
    results = json.loads((run / "results.json").read_text())
    cohorts = [json.loads(line) for line in (run / "cohorts.jsonl").read_text().splitlines()]
    kill_round = next(e["after_round"] for e in events if e["event"] == "killed")
    late_round = next(e["after_round"] for e in events if e["event"] == "late edge started")
    late_trained = [c["round"] for c in cohorts if late_id in c["replied"]]
    killed_after = [c["round"] for c in cohorts
                    if c["round"] > kill_round + 1 and set(killed_ids) & set(c["replied"])]
    survivors = [i for i in cfgs if i not in killed_ids]
    delivered = {i: installed_tag(cfgs[i].model_dir) for i in survivors}
    checks = {
        "completed": res.status == "finished:completed",
        "late_edge_not_drawn_before_it_started": all(
            late_id not in c["cohort"] for c in cohorts if c["round"] <= late_round),
        "late_edge_trained_after_it_joined": bool(late_trained),
        "killed_edges_answer_no_later_round": not killed_after,
        "every_survivor_has_the_student": all(delivered.values()),
    }
    return {"status": res.status, "mf1": results.get("mf1"), "rounds": len(cohorts),
            "exchanges": results.get("exchanges"),
            "serverapp_federate_seconds": results.get("wall_seconds"),
            "round_seconds": round_seconds(run),
            "late_edge_trained_rounds": late_trained,
            "rounds_killed_edges_were_drawn_after_death": [
                c["round"] for c in cohorts
                if c["round"] > kill_round and set(killed_ids) & set(c["cohort"])],
            "delivered": {str(k): v for k, v in delivered.items()},
            "checks": checks, "checks_passed": all(checks.values()), "cohorts": cohorts}


if __name__ == "__main__":
    raise SystemExit(main())
