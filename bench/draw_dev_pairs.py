"""Draw each development set's pairs once, by a fixed seed: where recipe settings are chosen.

Selection protocol (BENCHMARKS.md): every recipe-level setting is chosen on these
source->target pairs, on both development sets (HAR and HHAR_SA), and must hold on both;
AdaTime's 10 HAR scenarios are then reported once, for the chosen default. A pair is excluded
when it, or its reverse, is one of AdaTime's scenarios for that dataset.

    python bench/draw_dev_pairs.py [--dataset HHAR]            # prints the list
    python bench/draw_dev_pairs.py [--dataset HHAR] --check    # exit 1 if the committed list differs
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class DevSet:
    """One development set: its domains, the scenarios it must avoid, its seed and its file."""

    name: str
    seed: int  # fixed once, the day the set was drawn; never re-drawn
    domains: range
    adatime: frozenset[tuple[int, int]]  # AdaTime's reported scenarios for this dataset
    folder: str  # ../shared/data/<folder>
    file: Path

    def allowed(self, src: int, trg: int) -> bool:
        """Two different domains, neither way round one of AdaTime's scenarios."""
        return src != trg and (src, trg) not in self.adatime and (trg, src) not in self.adatime

    def draw(self, count: int = 10) -> list[tuple[int, int]]:
        pairs = [(s, t) for s in self.domains for t in self.domains if self.allowed(s, t)]
        order = np.random.default_rng(self.seed).permutation(len(pairs))
        return sorted(pairs[i] for i in order[:count])

    def text(self, pairs: list[tuple[int, int]]) -> str:
        return (f"# {self.name} development pairs: drawn by bench/draw_dev_pairs.py (seed "
                f"{self.seed}), disjoint from AdaTime's 10.\n# Recipe settings are chosen here "
                f"only; never on AdaTime's scenarios or any target-test label.\n"
                + ",".join(f"{s}->{t}" for s, t in pairs) + "\n")


DEV_SETS = {
    # UCI-HAR's 30 volunteers (AdaTime domains "1".."30")
    "HAR": DevSet("HAR", 20261130, range(1, 31), frozenset({
        (2, 11), (7, 13), (12, 16), (9, 18), (6, 23), (18, 27), (20, 5), (24, 8), (28, 27),
        (30, 20)}), "HAR", CONFIGS / "har-dev-pairs.txt"),
    # HHAR's 9 Samsung users ("0".."8"), re-split 70/30 in ../shared/data/HHAR_SA (issue 25)
    "HHAR": DevSet("HHAR_SA", 20261206, range(0, 9), frozenset({
        (2, 7), (0, 6), (1, 6), (3, 8), (4, 5), (0, 2), (5, 0), (6, 1), (7, 4), (8, 3)}),
        "HHAR_SA", CONFIGS / "hhar-sa-dev-pairs.txt"),
}

# The HAR set as module names, for bench/draw_domain_groups.py (written before HHAR_SA came).
SEED, LIST = DEV_SETS["HAR"].seed, DEV_SETS["HAR"].file
SUBJECTS, allowed = DEV_SETS["HAR"].domains, DEV_SETS["HAR"].allowed


def draw(count: int = 10) -> list[tuple[int, int]]:
    return DEV_SETS["HAR"].draw(count)


def text(pairs: list[tuple[int, int]]) -> str:
    return DEV_SETS["HAR"].text(pairs)


def run_cli(description: str, lists: dict[str, tuple[str, Path]]) -> int:
    """Print a drawn list (the first of `lists` unless --dataset names another), or with --check
    exit 1 if the committed file differs from it. `lists`: name -> (drawn text, committed file)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true")
    if len(lists) > 1:
        parser.add_argument("--dataset", choices=sorted(lists), default=next(iter(lists)))
    args = parser.parse_args()
    want, committed = lists[getattr(args, "dataset", next(iter(lists)))]
    if args.check:
        return 0 if committed.read_text() == want else 1
    sys.stdout.write(want)
    return 0


def main() -> int:
    return run_cli(__doc__.splitlines()[0],
                   {name: (dev.text(dev.draw()), dev.file) for name, dev in DEV_SETS.items()})


if __name__ == "__main__":
    sys.exit(main())
