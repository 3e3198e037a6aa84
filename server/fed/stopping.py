"""A label-free stopping rule for the UNI-KD rounds (`fed.stop: plateau`, issue 26).

At each evaluation point (a round in which an epoch of steps ends) the cloud averages what it already
has over that epoch's rounds: its own source cross-entropy (`src_ce`, the classifier on the
labelled source windows) and the clients' mean confusion weight of the data-domain
discriminator (`trg_w_mean`, a batch mean every reply carries; no target label is involved).
The run stops once both have stayed flat for `patience` evaluation points in a row: each
period's mean within `tolerance` of the previous one, relatively. The evaluation at the stop is the run's
final one, and the final student is delivered as after the last round. Never before
`min_fraction` of the run's evaluation points: β and the GRL α still move early on.

bench/stop_rule.py replays the rule on a run's curves (each epoch's signals and evaluation),
which gives exactly the run the rule would have stopped: the rounds before the stop do not
depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SIGNALS = ("src_ce", "trg_w_mean")  # label-free, already in every round's row


def epoch_signals(rows: list[dict]) -> dict[str, float]:
    """The mean of each signal over one epoch's round rows (NaN where none has it)."""
    out = {}
    for key in SIGNALS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[key] = sum(vals) / len(vals) if vals else math.nan
    return out


@dataclass(frozen=True)
class PlateauRule:
    patience: int  # epochs in a row with every signal flat
    tolerance: float  # relative change counted as flat
    min_fraction: float  # of the run's epochs, before which it never stops

    def flat(self, prev: dict[str, float], cur: dict[str, float]) -> bool:
        return all(abs(cur[k] - prev[k]) <= self.tolerance * max(abs(prev[k]), 1e-8)
                   for k in SIGNALS if not (math.isnan(prev[k]) or math.isnan(cur[k])))

    def stops(self, history: list[dict[str, float]], epochs: int) -> bool:
        """Whether to stop after the last epoch of `history` (one entry per epoch so far), in a
        run of `epochs` epochs."""
        if len(history) < max(self.patience + 1, math.ceil(self.min_fraction * epochs)):
            return False
        recent = history[-(self.patience + 1):]
        return all(self.flat(a, b) for a, b in zip(recent, recent[1:]))
