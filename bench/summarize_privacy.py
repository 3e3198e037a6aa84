"""The MF1-against-epsilon table of bench/har_privacy.sh, as Markdown for BENCHMARKS.md.

    python bench/summarize_privacy.py bench/out/har-privacy/groups/results.json
    python bench/summarize_privacy.py A/results.json B/results.json   # one table over both

One row per label (off, record-node-eps8, ...): MF1 per scenario (per-domain groups: the pooled
MF1 over the group's 5 edges; the mean over the seeds present), the mean, its difference to its no-DP row, the epsilon the ledger
spent (largest over the run's nodes) and the noise multiplier z (range over the scenarios).
The no-DP row of a label is `off`, or `iid-k<K>-off` for a label naming `-k<K>-` (the pooled
IID splits of `har_privacy.sh k100`), so each K is compared with its own partition.
"""

from __future__ import annotations

import json
import re
import statistics as st
import sys


def baseline_label(label: str) -> str:
    """The no-DP row a label is compared with."""
    k = re.search(r"-k(\d+)-", label)
    return f"iid-k{k.group(1)}-off" if k else "off"


def load_runs(paths: list[str]) -> list[dict]:
    """Every run of the given results.json files; a (label, scenario, seed) seen twice is an
    error, not a silent pick."""
    runs, seen = [], set()
    for path in paths:
        for r in json.load(open(path))["runs"]:
            key = (r["method"], r["scenario"], r["seed"])
            if key in seen:
                raise SystemExit(f"{path}: {key} already read from an earlier file")
            seen.add(key)
            runs.append(r)
    return runs


def mean_over_seeds(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """(label, scenario) -> its MF1 averaged over the seeds present, with the largest epsilon
    spent and the noise multipliers of every seed (a file with seeds 1-2 gives their mean, not
    the last seed read)."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        grouped.setdefault((r["method"], r["scenario"]), []).append(r)
    return {key: {"mf1": st.mean(r["mf1"] for r in rs),
                  "dp_epsilon_spent": max((r.get("dp_epsilon_spent") or 0) for r in rs) or None,
                  "dp_noise_multipliers": [r["dp_noise_multiplier"] for r in rs
                                           if r.get("dp_noise_multiplier")]}
            for key, rs in grouped.items()}


def table(paths: list[str]) -> str:
    runs = load_runs(paths)
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    labels = list(dict.fromkeys(r["method"] for r in runs))
    by = mean_over_seeds(runs)
    lines = ["| setting | " + " | ".join(scenarios) + " | mean | vs off | ε spent | z |",
             "|---" * (len(scenarios) + 5) + "|"]
    for label in labels:
        rows = [by.get((label, s)) for s in scenarios]
        mf1 = [r["mf1"] for r in rows if r]
        base = baseline_label(label)
        off = [by[(base, s)]["mf1"] for s in scenarios if (base, s) in by]
        cells = [f"{r['mf1']:.2f}" if r else "–" for r in rows]
        mean = st.mean(mf1) if len(mf1) == len(scenarios) else None
        gap = f"{mean - st.mean(off):+.2f}" if mean is not None and len(off) == len(scenarios) \
            else "–"
        eps = [r.get("dp_epsilon_spent") for r in rows if r and r.get("dp_epsilon_spent")]
        zs = [z for r in rows if r for z in r["dp_noise_multipliers"]]
        lines.append(f"| {label} | " + " | ".join(cells) + " | "
                     + (f"**{mean:.2f}**" if mean is not None else "–") + f" | {gap} | "
                     + (f"{max(eps):.3f}" if eps else "∞") + " | "
                     + (f"{min(zs):.2f}-{max(zs):.2f}" if zs else "0") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python bench/summarize_privacy.py RESULTS.json [RESULTS.json ...]")
    print(table(sys.argv[1:]))
