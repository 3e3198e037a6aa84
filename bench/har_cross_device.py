"""Issue 27: HAR cross-device. The target windows of many subjects pooled and split IID over
1,000 simulated phones (a few windows each), a cohort per round, against the full-participation
K=5 federation on the same pooled subjects; then client-level DP (DP-FedAvg, Poisson cohorts,
server/fed/dp/client_level.py) at several epsilons.

Every variant distils from one teacher (a centrally trained DANN ensemble of the HAR recipe on
source -> the pool, saved once beside the results) and runs in a fresh process, in-process
engine, 1 torch thread; MF1 is the federated evaluation over every client's test windows (the
whole pooled test split, for every variant).

    python bench/har_cross_device.py --data ../shared/data/HAR \\
        --variants k5,cohort50,poisson50-target-kd,dp8,dp3,dp1 --out bench/results/har_cross_device.json

A variant name may carry settings on top: `dp8-k2400@fed.dp_clip=0.5`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SOURCE = "2"
POOL = "+".join(str(s) for s in range(3, 24))  # 21 subjects: ~4,900 train, ~2,100 test windows
END_ONLY = "fed.eval_every=1000000"  # one federated evaluation, after the last round
CROSS_DEVICE = ["fed.clients=1000", "fed.clients_per_round=50", END_ONLY]
# Measured (BENCHMARKS.md, commit 3580411) when client-level DP withheld each client's mean w,
# which the expected cross KD needs: the DP variants and their no-DP reference ran the previous
# default (every spec §8 fix on, the target KD). Since issue 25's one default the mean w rides
# in the private update and this switch no longer changes the target KD.
POISSON = [*CROSS_DEVICE, "fed.cohort_sampling=poisson", "distill.reference_compat=false"]
POISSON_E100 = [*(o for o in POISSON if not o.startswith("fed.clients_per_round=")),
                "fed.clients_per_round=100"]
POISSON_K2400 = ["fed.clients=2400", "fed.clients_per_round=100", END_ONLY,
                 "fed.cohort_sampling=poisson"]
# 10,000 phones, more than the pool has pairs of windows: each phone's 2 windows are drawn for
# it alone from the pool's training split (`fed.partition=population:2`), so phones share
# windows (each window sits on about 4). The privacy unit stays the phone. A Poisson cohort of
# 100 (q = 0.01); scored, as K = 2,400, on the pooled test split
POISSON_K10000 = ["fed.clients=10000", "fed.clients_per_round=100", END_ONLY,
                  "fed.cohort_sampling=poisson", "fed.partition=population:2"]
VARIANTS = {
    "k5": ["fed.clients=5", END_ONLY],
    "cohort50": CROSS_DEVICE,
    "poisson50-target-kd": POISSON,
    **{f"dp{e}": [*POISSON, "fed.dp=central", f"fed.dp_epsilon={e}"] for e in (8, 3, 1)},
    # twice the cohort, q = 0.1: at epsilon 8 the noise on the mean (z C / E) is 0.0116 against
    # 0.0163 (z = 1.16 against 0.816). A larger population cannot be evaluated on this pool:
    # its 2,106 test windows give 2,000 clients fewer than the 2 each that evaluation needs
    "poisson100": [*POISSON_E100],
    **{f"dp{e}-e100": [*POISSON_E100, "fed.dp=central", f"fed.dp_epsilon={e}"]
       for e in (8, 3, 1)},
    # each network clipped to C / sqrt(3) (fed.dp_clip_scope): the D_d gradient, the largest
    # part of a client's update, no longer shrinks the student's
    **{f"dp{e}-pn": [*POISSON, "fed.dp=central", f"fed.dp_epsilon={e}",
                     "fed.dp_clip_scope=per-network"] for e in (8, 3, 1)},
    # the largest population the pool's 4,877 training windows give 2 each: 2,400 phones, a
    # Poisson cohort of 100 (q = 0.042). Its 2,106 test windows cannot be split 2 a phone, so
    # no node evaluates: the score is the reported student's on the pooled test split (`one`)
    "k2400": POISSON_K2400,
    **{f"dp{e}-k2400{tag}": [*POISSON_K2400, "fed.dp=central", f"fed.dp_epsilon={e}", *scope]
       for e in (8, 3, 1) for tag, scope in (("", []),
                                             ("-pn", ["fed.dp_clip_scope=per-network"]))},
    "k10000": POISSON_K10000,
    **{f"dp{e}-k10000": [*POISSON_K10000, "fed.dp=central", f"fed.dp_epsilon={e}"]
       for e in (8, 3, 1)},
}


def overrides_of(variant: str) -> list[str]:
    """A variant's overrides: a name above, optionally followed by @KEY=VALUE settings on top
    (e.g. dp8-k2400@fed.dp_clip=0.5), which the row records under the whole name."""
    name, *extra = variant.split("@")
    return [*VARIANTS[name], *extra]


def one(data: str, variant: str, teacher: str, seed: int) -> dict:
    import torch

    from server.fed.run import run_inprocess
    from shared.config import load_config
    from shared.unikd.evaluation import evaluate

    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.path={data}", "data.dataset=HAR",
                             f"data.scenario={SOURCE}->{POOL}", f"teacher.checkpoint={teacher}",
                             f"seed={seed}", *overrides_of(variant)])
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_inprocess(cfg, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rounds = res.rounds
    pooled = evaluate(res.cloud.reported_nets().student, pooled_test(cfg), 6)
    return {"variant": variant, "seed": seed, "overrides": overrides_of(variant),
            "mf1": res.final.get("mf1"), "acc": res.final.get("acc"),
            "pooled_mf1": pooled["mf1"], "pooled_acc": pooled["acc"],
            "eval_clients": res.final.get("clients"), "rounds": len(rounds),
            "dp_epsilon": rounds[-1].get("dp_epsilon") if rounds else None,
            "dp_noise_multiplier": rounds[-1].get("dp_noise_multiplier") if rounds else None,
            "mean_cohort": (sum(r["clients"] for r in rounds) / len(rounds)) if rounds else 0,
            "wall_seconds": wall, "cpu_seconds": cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def pooled(cfg, *splits: str) -> list:
    """The pool's windows of each of `splits`, every subject's normalised with the source
    statistics as every split of a scenario is (load_scenario reads one target domain); each
    subject is loaded once for all the splits."""
    import torch

    from shared.data.adatime import Domain
    from shared.data.scenario import load_scenario

    subjects = [load_scenario(cfg.data, f"{SOURCE}->{s}") for s in POOL.split("+")]
    out = []
    for split in splits:
        parts = [getattr(d, split) for d in subjects]
        out.append(Domain(torch.cat([d.x for d in parts]), torch.cat([d.y for d in parts]),
                          parts[0].file))
    return out


def pooled_test(cfg):
    """The whole pooled test split: the federated evaluation's windows when every node holds
    some (its MF1 is this one's, measured equal at K=1,000), and the only score where not."""
    return pooled(cfg, "trg_test")[0]


def make_teacher(data: str, path: Path) -> None:
    import torch

    from server.central.teacher import save_teacher, train_teacher
    from shared.config import load_config
    from shared.data.scenario import load_scenario

    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.path={data}", "data.dataset=HAR",
                             f"data.scenario={SOURCE}->{POOL}"])
    data_ = load_scenario(cfg.data, f"{SOURCE}->{POOL.split('+')[0]}")
    data_.trg_train, data_.trg_test = pooled(cfg, "trg_train", "trg_test")
    data_.target = POOL
    save_teacher(path, train_teacher(cfg, data_, progress=False), cfg, data_)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/HAR")
    ap.add_argument("--variants", default="k5,cohort50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/har_cross_device.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--teacher", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = str(Path(args.data).resolve())
    if args.child:
        print(json.dumps(one(data, args.child, args.teacher, args.seed)))
        return
    teacher = Path(args.out).with_suffix(".teacher.pt")
    if not teacher.exists():
        make_teacher(data, teacher)
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for variant in args.variants.split(","):
        overrides_of(variant)  # an unknown name fails here, before any run
        res = subprocess.run([sys.executable, __file__, "--data", data, "--child", variant,
                              "--teacher", str(teacher), "--seed", str(args.seed)],
                             check=True, capture_output=True, text=True).stdout
        rows = [r for r in rows if (r["variant"], r["seed"]) != (variant, args.seed)]
        rows.append(json.loads(res.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "scenario": f"{SOURCE}->{POOL}",
            "machine": "2-core Xeon box shared with other jobs, 1 torch thread, in-process Grid",
            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
