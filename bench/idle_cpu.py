"""Issue 12: what an idle deployment costs in CPU, with the shipped poll settings.

A cloud (Caddy proxy + loopback SuperLink + SuperExec, TLS and node authentication) and 2 edges
(`unikd edge`'s launcher and warm executor, default EdgeConfig polls) on 127.0.0.1, no run. After
the edges are online and `--settle` seconds have passed (past the edge's 10 s of fast polling),
every process of the deployment's groups is sampled from /proc over `--seconds`: CPU seconds
per wall second, per process and in all. Written to `--out` (JSON).

    PYTHONPATH=. python bench/idle_cpu.py --out bench/results/idle_cpu.json
"""

from __future__ import annotations

import argparse
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


def cpu_ticks(groups: set[int]) -> dict[int, tuple[int, str]]:
    from shared.platform.processes import group_members

    out = {}
    for group in groups:
        for pid in group_members(group):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:3]
            except OSError:  # gone meanwhile
                continue
            name = " ".join(a.rsplit("/", 1)[-1] for a in argv)[:60]
            out[pid] = (int(fields[11]) + int(fields[12]), name)
    return out


def measure(root: Path, seconds: float, settle: float) -> dict:
    from client.node.local_data import write_device_folder
    from client.node.supernode import EdgeConfig, start_edge
    from server.deploy.certs import make_node_key
    from server.deploy.cloud_config import CloudConfig
    from server.deploy.superlink import start_cloud
    from shared.platform.app_signing import generate_key
    from shared.config import load_config
    from shared.platform.processes import free_port

    cloud = start_cloud(CloudConfig(root / "cloud", host="127.0.0.1", port=free_port(),
                                    link_port=free_port(), dashboard_port=free_port(),
                                    names=["localhost", "127.0.0.1"],
                                    dev_certs=True))
    edges = []
    try:
        public = generate_key(root / "app.key")
        cli = cloud.cli(sign_key=root / "app.key")
        cfg = load_config(overrides=["fed.clients=2"])
        for i in range(2):
            private, pub = make_node_key(cloud.cfg.certs, f"edge-{i}")
            cli.register(pub, f"edge-{i}")
            edge = EdgeConfig(cloud.address, write_device_folder(root, i, 2, cfg),
                              ca=cloud.cfg.paths.ca_crt, key=private, client_id=i,
                              port=free_port(), home=root / f"home-{i}", app_key=public)
            edges.append(start_edge(edge, root / f"edge-{i}.log"))
        while len(cli.online_nodes()) < 2:
            time.sleep(0.5)
        time.sleep(settle)
        groups = set(cloud.groups) | {e.pid for e in edges}
        before, start = cpu_ticks(groups), time.monotonic()
        time.sleep(seconds)
        after, wall = cpu_ticks(groups), time.monotonic() - start
        hz = os.sysconf("SC_CLK_TCK")
        procs = [{"process": name, "cpu_share": (ticks - before[pid][0]) / hz / wall}
                 for pid, (ticks, name) in after.items() if pid in before]
        return {"wall_s": wall, "processes": procs,
                "total_cpu_share": sum(p["cpu_share"] for p in procs),
                "edge_defaults": {"node_poll": EdgeConfig.node_poll,
                                  "idle_poll": getattr(EdgeConfig, "idle_poll", None),
                                  "task_poll": EdgeConfig.task_poll}}
    finally:
        for e in edges:
            e.stop()
        cloud.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=20.0)
    p.add_argument("--out", default="bench/out/idle_cpu.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="unikd-idle-") as tmp:
        result = measure(Path(tmp), args.seconds, args.settle)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    result.update(commit=commit, machine=platform.processor() or platform.machine(),
                  cpus=os.cpu_count(), load_1min=os.getloadavg()[0],
                  date=time.strftime("%Y-%m-%d"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for proc in sorted(result["processes"], key=lambda x: -x["cpu_share"]):
        print(f"{100 * proc['cpu_share']:5.1f}%  {proc['process']}")
    print(f"idle deployment: {100 * result['total_cpu_share']:.1f}% of one core -> {out}")


if __name__ == "__main__":
    main()
