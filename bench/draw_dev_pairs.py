"""Draw the HAR development pairs once, by a fixed seed: where recipe settings are chosen.

Selection protocol (BENCHMARKS.md): every recipe-level setting is chosen on these 10
source->target subject pairs; AdaTime's 10 scenarios are then reported once, for the chosen
default. A pair is excluded when it, or its reverse, is one of AdaTime's scenarios.

    python bench/draw_dev_pairs.py            # prints the list in configs/har-dev-pairs.txt
    python bench/draw_dev_pairs.py --check    # exit 1 if the committed list differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SEED = 20261130  # fixed once, the day the protocol was written; never re-drawn
SUBJECTS = range(1, 31)  # UCI-HAR's 30 volunteers (AdaTime domains "1".."30")
ADATIME = {(2, 11), (7, 13), (12, 16), (9, 18), (6, 23), (18, 27), (20, 5), (24, 8), (28, 27),
           (30, 20)}
LIST = Path(__file__).resolve().parents[1] / "configs" / "har-dev-pairs.txt"


def allowed(src: int, trg: int) -> bool:
    """Two different subjects, neither way round one of AdaTime's scenarios."""
    return src != trg and (src, trg) not in ADATIME and (trg, src) not in ADATIME


def draw(count: int = 10) -> list[tuple[int, int]]:
    pairs = [(s, t) for s in SUBJECTS for t in SUBJECTS if allowed(s, t)]
    order = np.random.default_rng(SEED).permutation(len(pairs))
    return sorted(pairs[i] for i in order[:count])


def text(pairs: list[tuple[int, int]]) -> str:
    return (f"# HAR development pairs: drawn by bench/draw_dev_pairs.py (seed {SEED}), disjoint "
            f"from AdaTime's 10.\n# Recipe settings are chosen here only; never on AdaTime's "
            f"scenarios or any target-test label.\n" + ",".join(f"{s}->{t}" for s, t in pairs)
            + "\n")


def run_cli(description: str, want: str, committed: Path) -> int:
    """Print the drawn list, or with --check exit 1 if the committed file differs from it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        return 0 if committed.read_text() == want else 1
    sys.stdout.write(want)
    return 0


def main() -> int:
    return run_cli(__doc__.splitlines()[0], text(draw()), LIST)


if __name__ == "__main__":
    sys.exit(main())
