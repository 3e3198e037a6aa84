"""The label-free stopping rule (`fed.stop: plateau`, server/fed/stopping.py): it reads the
cloud's source CE and the clients' mean D_d confusion weight per epoch, never an evaluation."""

from __future__ import annotations

import math

from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from server.fed.stopping import PlateauRule, epoch_signals
from shared.config import load_config

FLAT = {"src_ce": 1.0, "trg_w_mean": 0.5}


def test_the_rule_stops_after_patience_flat_epochs_and_not_before_its_minimum():
    rule = PlateauRule(patience=2, tolerance=0.05, min_fraction=0.5)
    moving = [{"src_ce": 2.0 / (e + 1), "trg_w_mean": 0.5} for e in range(10)]
    assert not any(rule.stops(moving[:e], 10) for e in range(1, 11))  # CE keeps falling
    flat = [FLAT] * 10
    assert [rule.stops(flat[:e], 10) for e in range(1, 11)].index(True) == 4  # 5 of 10 epochs
    wobbly = [FLAT, FLAT, FLAT, {"src_ce": 1.0, "trg_w_mean": 0.6}, FLAT, FLAT, FLAT]
    assert [rule.stops(wobbly[:e], 6) for e in range(3, 8)] == [True, False, False, False, True]


def test_the_signals_are_label_free_means_of_the_rounds_rows():
    rows = [{"round": 1, "src_ce": 1.0, "trg_w_mean": 0.4, "mf1": 99.0},
            {"round": 2, "src_ce": 3.0, "trg_w_mean": 0.6}]
    assert epoch_signals(rows) == {"src_ce": 2.0, "trg_w_mean": 0.5}
    assert math.isnan(epoch_signals([{"round": 1}])["src_ce"])


def run(*overrides: str):
    cfg = load_config(overrides=["distill.epochs=6", "teacher.epochs=1", "teacher.batch_size=128",
                                 "fed.clients=2", "fed.teacher_placement=source-only", "seed=2",
                                 *overrides])
    return federate(InProcessGrid(load_component("client.node.client_app:app"), 2), cfg,
                    progress=False)


def test_a_stopped_run_is_the_full_runs_prefix_and_ends_with_an_evaluation():
    full = run()
    # every epoch counts as flat: the rule stops at its minimum, 3 of 6 epochs
    stopped = run("fed.stop=plateau", "fed.stop_tolerance=10", "fed.stop_patience=1")
    assert len(stopped.evals) == 3
    assert [e["mf1"] for e in stopped.evals] == [e["mf1"] for e in full.evals[:3]]
    assert len(stopped.rounds) == full.evals[2]["round"]
    assert stopped.exchanges == 1 + len(stopped.rounds) + 1  # query, rounds, final evaluation
    never = run("fed.stop=plateau", "fed.stop_tolerance=0")  # nothing is ever exactly flat
    assert [e["mf1"] for e in never.evals] == [e["mf1"] for e in full.evals]
