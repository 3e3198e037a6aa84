"""Issue 3 speed: seconds per UNI-KD student epoch at the reference's settings (10 epochs,
batch 32), with the frozen teacher cached once per window vs recomputed every step, and the
teacher's share of a whole run (teacher pre-training + student).

    python bench/speed_central.py --data ../shared/data/HAR --out bench/results/speed_central.json

Runs on one thread (torch.set_num_threads(1)); best of --repeats runs per setting.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from server.central.trainer import distill_unikd
from server.central.teacher import train_teacher
from shared.config import load_config
from shared.data.scenario import load_scenario


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/HAR")
    ap.add_argument("--scenarios", default="2->11,7->13,12->16,9->18,6->23")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/speed_central.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for sc in args.scenarios.split(","):
        base = [f"data.path={Path(args.data).resolve()}", "data.dataset=HAR", f"data.scenario={sc}",
                "distill.epochs=10", "distill.batch_size=32", "teacher.epochs=40",
                "teacher.ensemble=1"]
        cfg = load_config(None, base)
        data = load_scenario(cfg.data)
        t0 = time.perf_counter()
        teacher = train_teacher(cfg, data, progress=False)
        teacher_s = time.perf_counter() - t0
        row = {"scenario": sc, "teacher_seconds": teacher_s}
        for cache in (True, False):
            cfg = load_config(None, base + [f"distill.cache_teacher={str(cache).lower()}"])
            times = []
            for _ in range(args.repeats):
                res = distill_unikd(cfg, data, teacher, progress=False)
                times.append(res.train_seconds)
            key = "cached" if cache else "recomputed"
            row[f"student_seconds_{key}"] = min(times)
            row[f"epoch_seconds_{key}"] = min(times) / cfg.distill.epochs
        row["speedup_from_cache"] = row["student_seconds_recomputed"] / row["student_seconds_cached"]
        row["teacher_share_of_run"] = teacher_s / (teacher_s + row["student_seconds_cached"])
        rows.append(row)
        print(json.dumps(row))
    summary = {k: statistics.mean(r[k] for r in rows) for k in rows[0] if k != "scenario"}
    out = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                      f"thread, torch {torch.__version__}",
           "date": time.strftime("%Y-%m-%d"), "rows": rows, "mean": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
