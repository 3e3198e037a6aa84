"""Draw the HAR per-domain federation groups once, by a fixed seed (issue 15).

A group is one labelled source subject (the cloud) and five target subjects, one per edge:
`s->t1+t2+t3+t4+t5`, the scenario form `unikd bench federated --partition per-domain` takes.
The five groups split HAR's 30 subjects into five disjoint sets of six, so no subject is used
twice. No (source, target) pair of a group is one of AdaTime's 10 HAR scenarios or its reverse
(the exclusion of bench/draw_dev_pairs.py): a draw that would hold one is redrawn from the same
generator, so the list is a function of the seed alone.

    python bench/draw_domain_groups.py            # prints the list in configs/har-domain-groups.txt
    python bench/draw_domain_groups.py --check    # exit 1 if the committed list differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SEED = 20261130  # the development pairs' seed (bench/draw_dev_pairs.py); never re-drawn
SUBJECTS = range(1, 31)  # UCI-HAR's 30 volunteers (AdaTime domains "1".."30")
ADATIME = {(2, 11), (7, 13), (12, 16), (9, 18), (6, 23), (18, 27), (20, 5), (24, 8), (28, 27),
           (30, 20)}
GROUPS, TARGETS = 5, 5
LIST = Path(__file__).resolve().parents[1] / "configs" / "har-domain-groups.txt"


def allowed(src: int, trg: int) -> bool:
    return src != trg and (src, trg) not in ADATIME and (trg, src) not in ADATIME


def draw() -> list[tuple[int, list[int]]]:
    """(source, sorted targets) per group, sorted by source."""
    gen = np.random.default_rng(SEED)
    size = TARGETS + 1
    while True:
        order = [SUBJECTS[i] for i in gen.permutation(len(SUBJECTS))]
        groups = [(order[k * size], sorted(order[k * size + 1:(k + 1) * size]))
                  for k in range(GROUPS)]
        if all(allowed(s, t) for s, targets in groups for t in targets):
            return sorted(groups)


def scenarios(groups: list[tuple[int, list[int]]]) -> str:
    return ";".join(f"{s}->{'+'.join(map(str, targets))}" for s, targets in groups)


def text(groups: list[tuple[int, list[int]]]) -> str:
    return (f"# HAR per-domain federation groups: drawn by bench/draw_domain_groups.py (seed "
            f"{SEED}); source->5 targets, one edge per target.\n# Disjoint subjects; no "
            f"(source, target) pair is an AdaTime scenario or its reverse.\n"
            + scenarios(groups) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    want = text(draw())
    if args.check:
        return 0 if LIST.read_text() == want else 1
    sys.stdout.write(want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
