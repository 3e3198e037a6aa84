"""Issue 26: replay the label-free stopping rule (`fed.stop: plateau`) on bench curves.

`unikd bench federated` writes OUT/curves/<label>/<scenario>_seed<seed>.json: every round's
losses and every evaluation. The rounds before a stop do not depend on the rule, so the run the
rule would have stopped is exactly a prefix of the full one: its MF1 is the evaluation at the
stop, its exchanges that evaluation's count plus one (the final evaluation is an exchange of its
own). The rule reads only the cloud's source CE and the clients' mean D_d confusion weight.

    PYTHONPATH=$PWD python3 bench/stop_rule.py OUT/curves/LABEL [--patience 2,3] \
        [--tolerance 0.02,0.05,0.1] [--min-fraction 0.3,0.5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from server.fed.stopping import PlateauRule, epoch_signals


def replay(curve: dict, rule: PlateauRule) -> tuple[float, int, int]:
    """(MF1, exchanges, evaluation points run) of the run `rule` would have stopped."""
    rounds, evals = curve["rounds"], [e for e in curve["evals"] if "mf1" in e]
    epochs = len(evals)  # the run's evaluation points, as the round loop counts them
    history, seen = [], 0
    for i, ev in enumerate(evals):
        upto = next((j for j, r in enumerate(rounds) if r["round"] > ev["round"]), len(rounds))
        history.append(epoch_signals(rounds[seen:upto]))
        seen = upto
        if i < len(evals) - 1 and rule.stops(history, epochs):
            return ev["mf1"], ev["exchanges"] + 1, i + 1
    return evals[-1]["mf1"], curve["exchanges"], len(evals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("curves", nargs="+", help="OUT/curves/LABEL folders")
    ap.add_argument("--patience", default="2,3,5")
    ap.add_argument("--tolerance", default="0.02,0.05,0.1")
    ap.add_argument("--min-fraction", default="0.3,0.5")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    files = sorted(p for d in a.curves for p in Path(d).glob("*.json"))
    curves = {f"{f.parent.parent.parent.name}/{f.parent.name}/{f.stem}": json.loads(f.read_text())
              for f in files}
    rows = []
    full = {k: replay(c, PlateauRule(1, -1.0, 1.0)) for k, c in curves.items()}
    print(f"{len(curves)} runs; full schedule: mean MF1 "
          f"{sum(v[0] for v in full.values()) / len(full):.2f}, mean exchanges "
          f"{sum(v[1] for v in full.values()) / len(full):.1f}")
    for p in map(int, a.patience.split(",")):
        for t in map(float, a.tolerance.split(",")):
            for m in map(float, a.min_fraction.split(",")):
                rule = PlateauRule(p, t, m)
                got = {k: replay(c, rule) for k, c in curves.items()}
                mf1 = sum(v[0] for v in got.values()) / len(got)
                exch = sum(v[1] for v in got.values()) / len(got)
                ep = sum(v[2] for v in got.values()) / len(got)
                rows.append({"patience": p, "tolerance": t, "min_fraction": m, "mf1": mf1,
                             "exchanges": exch, "epochs": ep,
                             "per_run": {k: v[0] for k, v in got.items()}})
                print(f"patience {p} tolerance {t} min {m}: MF1 {mf1:.2f} "
                      f"(full {sum(v[0] for v in full.values()) / len(full):.2f}), "
                      f"exchanges {exch:.1f}, epochs {ep:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"full": full, "rules": rows}, indent=1))


if __name__ == "__main__":
    main()
