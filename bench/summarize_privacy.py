"""The MF1-against-epsilon table of bench/har_privacy.sh, as Markdown for BENCHMARKS.md.

    python bench/summarize_privacy.py bench/out/har-privacy/groups/results.json

One row per label (off, record-node-eps8, ...): MF1 per scenario (per-domain groups: the pooled
MF1 over the group's 5 edges), the mean, its difference to the `off` row, the epsilon the ledger
spent (largest over the run's nodes) and the noise multiplier z (range over the scenarios).
"""

from __future__ import annotations

import json
import statistics as st
import sys


def table(path: str) -> str:
    runs = json.load(open(path))["runs"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    labels = list(dict.fromkeys(r["method"] for r in runs))
    by = {(r["method"], r["scenario"]): r for r in runs}
    off = [by[("off", s)]["mf1"] for s in scenarios if ("off", s) in by]
    lines = ["| setting | " + " | ".join(scenarios) + " | mean | vs off | ε spent | z |",
             "|---" * (len(scenarios) + 5) + "|"]
    for label in labels:
        rows = [by.get((label, s)) for s in scenarios]
        mf1 = [r["mf1"] for r in rows if r]
        cells = [f"{r['mf1']:.2f}" if r else "–" for r in rows]
        mean = st.mean(mf1) if len(mf1) == len(scenarios) else None
        gap = f"{mean - st.mean(off):+.2f}" if mean is not None and len(off) == len(scenarios) \
            else "–"
        eps = [r.get("dp_epsilon_spent") for r in rows if r and r.get("dp_epsilon_spent")]
        zs = [r.get("dp_noise_multiplier") for r in rows if r and r.get("dp_noise_multiplier")]
        lines.append(f"| {label} | " + " | ".join(cells) + " | "
                     + (f"**{mean:.2f}**" if mean is not None else "–") + f" | {gap} | "
                     + (f"{max(eps):.3f}" if eps else "∞") + " | "
                     + (f"{min(zs):.2f}-{max(zs):.2f}" if zs else "0") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(table(p))
