"""Every message exchange of a run is counted once per round trip (issue 26's unit of cost).

The grid below counts the message batches the cloud pushes, independently of the Sender's
own counter: each batch is one round trip (every node asked at once)."""

from __future__ import annotations

import json

import pytest

from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from server.fed.run_folder import write_fed_run
from shared.config import load_config
from shared.platform.runs import make_run_dir

CLIENTS = 2
BASE = ["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128",
        f"fed.clients={CLIENTS}", "fed.rounds=3", "fed.checkpoint_every=1"]


class CountingGrid(InProcessGrid):
    """The in-process grid, counting the non-empty message batches pushed to it by type."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[str] = []

    def push_messages(self, messages):
        messages = list(messages)
        if messages:
            self.batches.append(messages[0].metadata.message_type)
        return super().push_messages(messages)


def run(overrides: list[str], run_dir=None, **kw):
    cfg = load_config(overrides=BASE + overrides)
    grid = CountingGrid(load_component("client.node.client_app:app"), CLIENTS)
    return cfg, grid, federate(grid, cfg, progress=False, run_dir=run_dir, **kw)


@pytest.mark.parametrize("extra", [[], ["fed.secure_aggregation=true"]], ids=["plain", "secagg"])
def test_every_round_trip_is_counted_once(extra):
    cfg, grid, result = run(extra)
    assert result.exchanges == len(grid.batches) > 0
    kinds = {k: grid.batches.count(k) for k in set(grid.batches)}
    assert kinds["query"] == 1
    assert kinds["train"] == 3  # fed.rounds
    assert kinds["evaluate"] == len(result.evals)
    assert kinds["train.teacher"] > 0  # the federated DANN teacher's rounds
    if extra:  # keys (the round's "train"), then shares, masked vectors, unmasking
        assert sum(v for k, v in kinds.items() if k.startswith("train.secagg_")) == 3 * 3
    assert result.evals[-1]["exchanges"] == result.exchanges  # no delivery: no edge service


def test_the_run_folder_reports_exchanges_and_plots_them(tmp_path):
    cfg, grid, result = run([])
    run_dir = make_run_dir(tmp_path, "fed")
    summary = write_fed_run(run_dir, cfg, result)
    assert summary["exchanges"] == json.loads((run_dir / "results.json").read_text())["exchanges"]
    assert summary["exchanges"] == len(grid.batches)
    assert (run_dir / "mf1_vs_exchanges.png").stat().st_size > 0


def test_a_resumed_run_counts_the_exchanges_before_its_interruption(tmp_path):
    run_dir = make_run_dir(tmp_path, "fed")
    _, first, _ = run([], run_dir=run_dir, stop_after=2)
    _, second, resumed = run([], resume=run_dir)
    # the resumed process asks the count query again: one exchange more than an uninterrupted run
    assert resumed.exchanges == len(first.batches) + len(second.batches)


EPOCHS = ["distill.epochs=3", "fed.rounds=0"]  # an evaluation after each of 3 epochs of steps


@pytest.mark.parametrize("ema", ["distill.ema_decay=0", "distill.ema_decay=0.9"],
                         ids=["live", "ema"])
def test_piggybacked_evaluations_score_the_same_weights_in_fewer_exchanges(ema):
    """Live weights are the sent ones; the EMA's ride beside them (wire.EVAL_STUDENT)."""
    _, plain_grid, plain = run(EPOCHS + [ema, "fed.evaluation=exchange"])
    _, grid, piggy = run(EPOCHS + [ema])  # the default: fed.evaluation=piggyback
    assert len(piggy.evals) == len(plain.evals) == 3
    # the same scores of the same weights; the ledger (UNI-KD rounds' bytes) now also holds
    # the flag and the confusion counts the rounds carry
    skip = ("exchanges", "mb_total")
    strip = [{k: v for k, v in e.items() if k not in skip} for e in plain.evals]
    assert [{k: v for k, v in e.items() if k not in skip} for e in piggy.evals] == strip
    assert plain_grid.batches.count("evaluate") == 3
    assert grid.batches.count("evaluate") == 1  # only the one after the last round
    assert piggy.exchanges == plain.exchanges - 2 == len(grid.batches)
    assert [r["src_loss"] for r in piggy.rounds] == [r["src_loss"] for r in plain.rounds]
    # each evaluation is stamped with the exchanges spent when its weights were trained
    assert piggy.evals[-1]["exchanges"] == piggy.exchanges
    assert piggy.evals[0]["exchanges"] == plain.evals[0]["exchanges"] - 1


def test_evaluations_stay_exchanges_where_a_round_cannot_carry_them():
    # secure aggregation's replies are masked sums: no node's confusion counts can ride on them
    _, grid, result = run(EPOCHS + ["fed.secure_aggregation=true"])
    assert grid.batches.count("evaluate") == len(result.evals) == 3


def test_a_resumed_run_completes_the_pending_evaluation(tmp_path):
    _, _, full = run(EPOCHS)
    first_eval = full.evals[0]["round"]  # its score rides on the next round
    run_dir = make_run_dir(tmp_path, "fed")
    run(EPOCHS, run_dir=run_dir, stop_after=first_eval)
    _, _, resumed = run(EPOCHS, resume=run_dir)
    assert [e["mf1"] for e in resumed.evals] == [e["mf1"] for e in full.evals]
    assert [e["round"] for e in resumed.evals] == [e["round"] for e in full.evals]
