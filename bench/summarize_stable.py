"""Tables of issue 25 items 4-5 (bench/dev_sets_stable.sh) from `bench central` results.json
files evaluated every epoch with `--ema-probes`: per lever and reported student (the live one, an
EMA of decay d, or a label-free choice among the last 5 epochs), the mean final MF1, the mean
over runs of the std of the last 5 evaluations, and on how many (pair, seed) runs the student
beats its own teacher. "last-5 mean": the mean of those 5 evaluations, a less noisy
estimate of what a run ends on than the last one.

    python3 bench/summarize_stable.py HAR=bench/results/dev_sets_stable_har.json \
        HHAR_SA=bench/results/dev_sets_stable_hhar_sa.json
"""

from __future__ import annotations

import json
import statistics as st
import sys

LAST = 5


def last_std(values: list[float]) -> float:
    return st.stdev(values[-LAST:])


def chosen_by_agreement(mf1: list[float], agree: list[float]) -> float:
    """Label-free checkpoint choice: of the last 5 epochs, the one whose arg-max agrees most with
    the teacher's on the unlabelled target train windows (ties: the latest)."""
    tail = list(zip(agree[-LAST:], range(LAST), mf1[-LAST:]))
    return max(tail)[2]


def students(run: dict) -> dict[str, tuple[float, float, float]]:
    """(final MF1, last-5 std, last-5 mean) of every reported student a run measured. The runs
    train the live student (distill.ema_decay=0); the EMAs are its probes."""
    live = run["probes"]["live"]
    out = {"live": (run["mf1"], run["mf1_last5_std"], st.mean(live[-LAST:]))}
    for name, mf1 in run.get("probes", {}).items():
        if name != "live":
            out[name] = (mf1[-1], last_std(mf1), st.mean(mf1[-LAST:]))
    if "live" in run.get("agree_by_epoch", {}):
        pick = chosen_by_agreement(live, run["agree_by_epoch"]["live"])
        out["live, best teacher agreement of last 5"] = (pick, float("nan"), float("nan"))
    return out


def table(path: str) -> dict[tuple[str, str], dict]:
    report = json.load(open(path))
    teacher = {(t["scenario"], t["seed"]): t["mf1"] for t in report["teachers"]}
    cells: dict[tuple[str, str], dict] = {}
    for run in report["runs"]:
        for student, (mf1, std, tail) in students(run).items():
            c = cells.setdefault((run["method"], student),
                                 {"mf1": [], "std": [], "tail": [], "beats": 0, "pairs": {}})
            c["mf1"].append(mf1)
            c["std"].append(std)
            c["tail"].append(tail)
            c["beats"] += mf1 > teacher[(run["scenario"], run["seed"])]
            c["pairs"].setdefault(run["scenario"], []).append(mf1)
    return cells


def main(args: list[str]) -> None:
    sets = dict(a.split("=", 1) for a in args)
    tables = {name: table(path) for name, path in sets.items()}
    keys = list(dict.fromkeys(k for t in tables.values() for k in t))
    head = " | ".join(f"{n} MF1 | {n} last-5 mean | {n} last-5 std | {n} > teacher"
                      for n in tables)
    print(f"| lever | reported student | {head} |")
    print("|---|---|" + "---:|" * (4 * len(tables)))
    for k in keys:
        row = []
        for t in tables.values():
            c = t.get(k)
            if c is None:
                row += ["–"] * 4
                continue
            stds = [s for s in c["std"] if s == s]
            tails = [s for s in c["tail"] if s == s]
            row += [f"{st.mean(c['mf1']):.2f}", f"{st.mean(tails):.2f}" if tails else "–",
                    f"{st.mean(stds):.2f}" if stds else "–", f"{c['beats']} / {len(c['mf1'])}"]
        print(f"| {k[0]} | {k[1]} | " + " | ".join(row) + " |")
    for name, t in tables.items():
        pairs = list(dict.fromkeys(p for c in t.values() for p in c["pairs"]))
        print(f"\n{name} per pair (mean over seeds):\n")
        print("| lever | student | " + " | ".join(pairs) + " | mean |")
        print("|---|---|" + "---:|" * (len(pairs) + 1))
        for k, c in t.items():
            means = [st.mean(c["pairs"][p]) if p in c["pairs"] else float("nan") for p in pairs]
            print(f"| {k[0]} | {k[1]} | " + " | ".join(f"{m:.2f}" for m in means)
                  + f" | {st.mean(c['mf1']):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
