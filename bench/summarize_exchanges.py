"""Issue 26: one trade-off table (MF1 per pair, mean, exchanges, in-process seconds) from
`unikd bench federated` outputs, as bench/fewer_exchanges.sh writes them.

    python3 bench/summarize_exchanges.py OUT_1 OUT_2 ... [--json bench/results/X.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def rows_of(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


def line(label: str, runs: list[dict], pairs: list[str]) -> str:
    by = {r["scenario"]: r for r in runs}
    cells = [f"{by[p]['mf1']:.2f}" if p in by else "–" for p in pairs]
    mean = statistics.mean(r["mf1"] for r in runs)
    ex = sorted(r["exchanges"] for r in runs)
    secs = statistics.median(r["train_seconds"] for r in runs)
    teach = [r["teacher_mf1"] for r in runs if r.get("teacher_mf1") is not None]
    t = f"{statistics.mean(teach):.2f}" if teach else "–"
    return (f"| {label} | " + " | ".join(cells) + f" | **{mean:.2f}** | {t} | "
            f"{ex[0]}-{ex[-1]} | {secs:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outs", nargs="+")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    table = {Path(o).name: rows_of(Path(o)) for o in a.outs}
    pairs = list(dict.fromkeys(r["scenario"] for runs in table.values() for r in runs))
    print("| run | " + " | ".join(pairs) + " | mean | teacher MF1 | exchanges | s per run "
          "(median) |")
    print("|" + "---|" * (len(pairs) + 5))
    for label, runs in table.items():
        print(line(label, runs, pairs))
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
