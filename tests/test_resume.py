"""A federation stopped after round k and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import torch

from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from shared.config import load_config


def _grid(n: int) -> InProcessGrid:
    return InProcessGrid(load_component("client.node.client_app:app"), n)


def test_kill_after_round_k_and_resume_matches_uninterrupted(tmp_path):
    cfg = load_config(overrides=["distill.epochs=2", "teacher.epochs=1", "fed.clients=2",
                                 "fed.checkpoint_every=4", "seed=5"])
    full = federate(_grid(2), cfg, progress=False)

    run_dir = tmp_path / "run"
    federate(_grid(2), cfg, progress=False, run_dir=run_dir, stop_after=9)  # "killed" in round 10
    resumed = federate(_grid(2), cfg, progress=False, run_dir=run_dir,
                       resume=run_dir)  # restarts after the last checkpoint (round 8)

    assert len(resumed.rounds) == len(full.rounds)
    assert [r["src_loss"] for r in resumed.rounds] == [r["src_loss"] for r in full.rounds]
    assert resumed.final["mf1"] == full.final["mf1"]
    for (name, a), b in zip(full.cloud.nets.state_dict().items(),
                            resumed.cloud.nets.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    import pytest

    from shared.errors import UnikdError

    cfg = load_config(overrides=["distill.epochs=1", "teacher.epochs=1", "fed.clients=1"])
    federate(_grid(1), cfg, progress=False, run_dir=tmp_path)
    other = load_config(overrides=["distill.epochs=2", "teacher.epochs=1", "fed.clients=1"])
    with pytest.raises(UnikdError, match="resume with the run's own config"):
        federate(_grid(1), other, progress=False, resume=tmp_path)


def test_a_resumed_record_dp_run_charges_every_node_as_an_uninterrupted_one(tmp_path):
    """The epsilon ledger is replayed on resume: teacher phase, then the rounds before the
    checkpoint, then the rounds run after it; the same rows as without the interruption."""
    cfg = load_config(overrides=["distill.epochs=1", "teacher.epochs=1", "fed.clients=2",
                                 "fed.dp=record", "fed.dp_epsilon=8", "fed.checkpoint_every=3",
                                 "seed=5"])
    full = federate(_grid(2), cfg, progress=False)
    run_dir = tmp_path / "run"
    federate(_grid(2), cfg, progress=False, run_dir=run_dir, stop_after=4)
    resumed = federate(_grid(2), cfg, progress=False, run_dir=run_dir, resume=run_dir)
    assert resumed.privacy.rows == full.privacy.rows
    assert {r["phase"] for r in full.privacy.rows} == {"teacher", "unikd"}
    assert [r["dp_epsilon"] for r in resumed.rounds] == [r["dp_epsilon"] for r in full.rounds]


def test_a_resumed_run_keeps_the_students_ema(tmp_path):
    """With `distill.ema_decay` on, the checkpoint carries the EMA: the resumed run evaluates
    and delivers the same averaged student as an uninterrupted one."""
    from server.fed import delivery
    from shared.protocol.records import student_state

    cfg = load_config(overrides=["distill.epochs=2", "teacher.epochs=1", "fed.clients=2",
                                 "fed.checkpoint_every=4", "seed=5", "distill.ema_decay=0.8"])
    full = federate(_grid(2), cfg, progress=False, delivery_dir=tmp_path / "full")
    run_dir = tmp_path / "run"
    federate(_grid(2), cfg, progress=False, run_dir=run_dir, stop_after=9)
    resumed = federate(_grid(2), cfg, progress=False, run_dir=run_dir, resume=run_dir,
                       delivery_dir=tmp_path / "resumed")

    assert [e["mf1"] for e in resumed.evals] == [e["mf1"] for e in full.evals]
    assert resumed.final["mf1"] == full.final["mf1"]
    for (name, a), b in zip(full.cloud.ema.state_dict().items(),
                            resumed.cloud.ema.state_dict().values()):
        assert torch.equal(a, b), name
    delivered = delivery.load_latest(tmp_path / "resumed").student
    ema = student_state(resumed.cloud.reported_nets())
    assert delivered.keys() == ema.keys()
    assert all(torch.equal(delivered[k], ema[k]) for k in ema)  # the final student: the EMA
