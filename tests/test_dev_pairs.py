"""The development pairs are the committed, seeded draw, disjoint from AdaTime's scenarios."""

from __future__ import annotations

import runpy
from pathlib import Path

from shared.data.datasets import get_spec, parse_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_committed_dev_pairs_are_the_seeded_draw_and_disjoint_from_adatime():
    tool = runpy.run_path(str(ROOT / "bench" / "draw_dev_pairs.py"))
    listed = (ROOT / "configs" / "har-dev-pairs.txt").read_text()
    assert listed == tool["text"](tool["draw"]())
    pairs = [parse_scenario(s) for s in listed.splitlines()[-1].split(",")]
    spec = get_spec("HAR")
    adatime = {tuple(map(str, p)) for p in [*spec.main_scenarios, *spec.extra_scenarios]}
    assert len(pairs) == len(set(pairs)) == 10
    for src, trg in pairs:
        assert (src, trg) not in adatime and (trg, src) not in adatime
