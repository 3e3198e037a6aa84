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


def test_committed_hhar_sa_pairs_are_the_seeded_draw_and_disjoint_from_adatime():
    """The second development set (issue 25): 10 user pairs of ../shared/data/HHAR_SA."""
    tool = runpy.run_path(str(ROOT / "bench" / "draw_dev_pairs.py"))
    dev = tool["DEV_SETS"]["HHAR"]
    listed = (ROOT / "configs" / "hhar-sa-dev-pairs.txt").read_text()
    assert listed == dev.text(dev.draw())
    pairs = [parse_scenario(s) for s in listed.splitlines()[-1].split(",")]
    spec = get_spec("HHAR")
    adatime = {tuple(map(str, p)) for p in [*spec.main_scenarios, *spec.extra_scenarios]}
    assert {tuple(map(str, p)) for p in dev.adatime} == adatime  # the registry's scenarios
    assert len(pairs) == len(set(pairs)) == 10
    for src, trg in pairs:
        assert src in [str(d) for d in range(9)] and trg in [str(d) for d in range(9)]
        assert (src, trg) not in adatime and (trg, src) not in adatime
