"""Issue 12: a full real-HAR run deployed against the same run in-process.

One HAR scenario with the federated default (the defaults: no config file), the
federated DANN teacher pre-training included, K edges. Deployed: Caddy proxy + loopback
SuperLink with TLS and node auth, K `unikd edge` processes on 127.0.0.1 (launcher + warm
executor, signed bundle), each reading only its own data folder (the windows the simulator
gives that client). In-process: the Ray-free harness, same config. Reported: wall times (the
ServerApp's federate wall, and submit -> finished), rounds, MF1 of both, their ratio, and
whether the MF1 is the same bit for bit.

    python bench/deploy_har.py --data ../shared/data/HAR --scenario 2->11 --clients 5
    python bench/deploy_har.py --data ../shared/data/HAR --set distill.epochs=2 \
        --set teacher.epochs=2 --out /tmp/smoke.json   # a smoke run, not the report
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

from bench.deploy_exchange import comma_choices, inprocess_run, one_run  # noqa: E402
from server.deploy.cloud_config import LINK_STATES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="the HAR folder (AdaTime layout)")
    ap.add_argument("--scenario", default="2->11")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--link-state", default="disk", help="comma list: disk, memory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for both runs, e.g. distill.epochs=2 for a smoke run")
    ap.add_argument("--node-poll", type=float, help="the edges' poll of the cloud while a run "
                    "sends work (default: the shipped EdgeConfig.node_poll)")
    ap.add_argument("--task-poll", type=float, help="the executors' task poll (default: shipped)")
    ap.add_argument("--timeout", type=float, default=3 * 3600.0, help="seconds per deployed run")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "deploy_har.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    overrides = ["data.dataset=HAR", f"data.path={Path(args.data).resolve()}",
                 f"data.scenario={args.scenario}", f"fed.clients={args.clients}",
                 f"seed={args.seed}", *args.set]
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="unikd-deploy-har-"))
    states = comma_choices(ap, "--link-state", args.link_state, LINK_STATES)
    runs = [inprocess_run(work / "inprocess", overrides)]
    runs[0]["round_seconds"] = None  # per-round lists kept out of the report: see the medians
    print(json.dumps(runs[-1]), flush=True)
    polls = {k: v for k, v in (("node_poll", args.node_poll),
                               ("task_poll", args.task_poll)) if v is not None}
    for state in states:
        t0 = time.perf_counter()
        run = one_run(work / f"deployed-{state}", "ours", overrides, args.clients, state,
                      timeout=args.timeout, polls=polls)
        run.update(polls)
        run["wall_seconds"] = time.perf_counter() - t0  # cloud + edges up, run, all stopped
        run["round_seconds"] = None
        runs.append(run)
        print(json.dumps(run), flush=True)
    base = runs[0]
    for run in runs[1:]:
        run["same_mf1_bit_for_bit"] = run["mf1"] == base["mf1"]
        run["federate_ratio_to_inprocess"] = (run["serverapp_federate_seconds"]
                                              / base["serverapp_federate_seconds"])
        run["wall_ratio_to_inprocess"] = run["wall_seconds"] / base["wall_seconds"]
    report = {
        "overrides": args.set,
        "polls": {"node_poll": args.node_poll, "task_poll": args.task_poll},
        "what": f"HAR {args.scenario}, the defaults (federated DANN teacher included), "
                f"K={args.clients}, seed {args.seed}: deployed (proxy + SuperLink with TLS and "
                f"node auth, {args.clients} unikd edge processes on 127.0.0.1) vs in-process",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
