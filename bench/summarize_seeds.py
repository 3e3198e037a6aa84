"""Tables for bench/student_steps_seeds.sh: per development set and variant, the mean MF1 over
pairs and seeds, each seed's mean, the difference from the first variant (paired by pair and
seed) with its spread over seeds, exchanges per run and the last-5 std; then per pair the
seed means.

    python3 bench/summarize_seeds.py OUT L1 L2sqrt L2rep [--json FILE]
"""

from __future__ import annotations

import glob
import json
import os
import statistics as st
import sys


def load(out: str, dev_set: str, variant: str) -> dict[tuple[str, int], dict]:
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, f"{dev_set}-{variant}-s*", "results.json"))):
        for r in json.load(open(path))["runs"]:
            runs[(r["scenario"], r["seed"])] = r
    return runs


def table(out: str, dev_set: str, variants: list[str]) -> dict:
    by = {v: load(out, dev_set, v) for v in variants}
    base = by[variants[0]]
    common = sorted(set.intersection(*(set(r) for r in by.values())))
    seeds = sorted({s for _, s in common})
    pairs = sorted({p for p, _ in common}, key=lambda p: [int(x) for x in p.split("->")])
    rows = {}
    for v in variants:
        runs = by[v]
        per_seed = [st.mean(runs[(p, s)]["mf1"] for p in pairs) for s in seeds]
        diffs = [st.mean(runs[(p, s)]["mf1"] - base[(p, s)]["mf1"] for p in pairs) for s in seeds]
        rows[v] = {"mean": st.mean(per_seed), "per_seed": per_seed, "diff": st.mean(diffs),
                   "diff_per_seed": diffs,
                   "exchanges": [min(runs[k]["exchanges"] for k in common),
                                 max(runs[k]["exchanges"] for k in common)],
                   "last5_std": st.mean(runs[k]["mf1_last5_std"] for k in common),
                   "per_pair": {p: st.mean(runs[(p, s)]["mf1"] for s in seeds) for p in pairs}}
    return {"seeds": seeds, "pairs": pairs, "rows": rows}


def show(dev_set: str, t: dict) -> None:
    print(f"\n{dev_set}: {len(t['pairs'])} pairs x seeds {t['seeds']}")
    print("| variant | mean MF1 | per seed | vs first (per seed) | exchanges / run | last-5 std |")
    print("|---|---:|---|---|---|---:|")
    for v, r in t["rows"].items():
        seeds = " / ".join(f"{x:.2f}" for x in r["per_seed"])
        diffs = " / ".join(f"{x:+.2f}" for x in r["diff_per_seed"])
        print(f"| {v} | {r['mean']:.2f} | {seeds} | {r['diff']:+.2f} ({diffs}) | "
              f"{r['exchanges'][0]}-{r['exchanges'][1]} | {r['last5_std']:.2f} |")
    print("| variant | " + " | ".join(t["pairs"]) + " |")
    print("|---|" + "---|" * len(t["pairs"]))
    for v, r in t["rows"].items():
        print(f"| {v} | " + " | ".join(f"{r['per_pair'][p]:.2f}" for p in t["pairs"]) + " |")


def main(argv: list[str]) -> None:
    dump = None
    if "--json" in argv:
        i = argv.index("--json")
        dump, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    out, variants = argv[0], argv[1:]
    result = {}
    for dev_set in ("har", "hhar"):
        if all(load(out, dev_set, v) for v in variants):
            result[dev_set] = table(out, dev_set, variants)
            show(dev_set, result[dev_set])
    if dump:
        with open(dump, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
