"""The main job's final student and its spread (issue 25, item 5): per run folder of
`unikd federate`, the last evaluation's MF1 and the sample std of the last 5 evaluations.

    python3 bench/stable_main_job.py OUT.json RUN_DIR...
"""

from __future__ import annotations

import csv
import json
import statistics as st
import sys
from pathlib import Path


def summary(run: Path) -> dict:
    rows = list(csv.DictReader(open(run / "evals.csv")))
    mf1 = [float(r["mf1"]) for r in rows if r.get("mf1")]
    cfg = (run / "config.yaml").read_text()
    decay = next(line.split(":", 1)[1].strip() for line in cfg.splitlines()
                 if line.strip().startswith("ema_decay:"))
    res = json.loads((run / "results.json").read_text())
    return {"run": run.name, "ema_decay": float(decay), "final_mf1": mf1[-1],
            "last5": mf1[-5:], "last5_std": st.stdev(mf1[-5:]), "evaluations": len(mf1),
            "wall_seconds": res.get("wall_seconds") or res.get("train_seconds")}


if __name__ == "__main__":
    out = [summary(Path(p)) for p in sys.argv[2:]]
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1) + "\n")
    for s in out:
        print(f"ema_decay={s['ema_decay']}: final {s['final_mf1']:.2f}, last-5 std "
              f"{s['last5_std']:.2f} ({', '.join(f'{v:.2f}' for v in s['last5'])})")
