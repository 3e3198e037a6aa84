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

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# the development pairs' seed, subjects and AdaTime exclusion: one definition of each
from bench.draw_dev_pairs import SEED, SUBJECTS, allowed, run_cli  # noqa: E402

GROUPS, TARGETS = 5, 5
LIST = REPO / "configs" / "har-domain-groups.txt"


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
    return run_cli(__doc__.splitlines()[0], {"HAR": (text(draw()), LIST)})


if __name__ == "__main__":
    sys.exit(main())
