"""Print per-method 10-scenario and main-5 means from a bench results.json (for BENCHMARKS.md).

    python bench/summarize.py bench/out/har-central/results.json
"""

from __future__ import annotations

import json
import statistics as st
import sys

MAIN5 = {"2->11", "7->13", "12->16", "9->18", "6->23"}


def summarize(path: str) -> None:
    runs = json.load(open(path))["runs"]
    by: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        by.setdefault(r["method"], {}).setdefault(r["scenario"], []).append(r["mf1"])
    print("| method | runs | 10-scenario mean | main-5 mean | mean s/run |")
    print("|---|---|---|---|---|")
    for m, d in by.items():
        means = {s: st.mean(v) for s, v in d.items()}
        main = [v for s, v in means.items() if s in MAIN5]
        secs = st.mean(r["train_seconds"] for r in runs if r["method"] == m)
        ten = f"{st.mean(means.values()):.2f}" if len(means) == 10 else f"({len(means)} scen.)"
        print(f"| {m} | {sum(map(len, d.values()))} | {ten} | "
              f"{st.mean(main):.2f} | {secs:.1f} |" if main else f"| {m} | ... |")




def sensitivity(path: str, method: str) -> None:
    """How the student's MF1 follows its teacher's, per (scenario, seed)."""
    report = json.load(open(path))
    teacher = {(t["scenario"], t["seed"]): t["mf1"] for t in report["teachers"]}
    pairs = [(teacher[(r["scenario"], r["seed"])], r["mf1"]) for r in report["runs"]
             if r["method"] == method and (r["scenario"], r["seed"]) in teacher]
    if len(pairs) < 3:
        return
    t, s = zip(*pairs)
    corr = st.correlation(t, s)
    slope = st.linear_regression(t, s).slope
    gap = st.mean(b - a for a, b in pairs)
    print(f"{method}: n={len(pairs)} corr(teacher, student)={corr:.2f} slope={slope:.2f} "
          f"mean(student - teacher)={gap:+.2f} pts")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        summarize(p)
        for m in dict.fromkeys(r["method"] for r in json.load(open(p))["runs"]):
            sensitivity(p, m)
