"""`bench federated --cache-teachers`: a federated DANN teacher is trained once per (recipe,
scenario, seed) and reused by later runs in the same --out, e.g. the other teacher placement;
a run on the cached teacher is the run that trained it, bit for bit. Rows carry each edge's MF1."""

from __future__ import annotations

import pytest

from server.bench.federated import fed_task, fed_teacher_key
from shared.config import load_config
from shared.errors import UnikdError

SCENARIO = "0->1+2"  # synthetic, one edge per target domain
SETS = ["fed.partition=per-domain", "teacher.epochs=1", "distill.epochs=1", "fed.rounds=2"]


def _base(*extra: str, label: str) -> dict:
    return {"file": None, "overrides": [*SETS, *extra], "label": label, "cache_teachers": True}


def test_the_other_placement_reuses_the_teacher_and_a_cached_run_equals_a_trained_one(tmp_path):
    out = str(tmp_path)
    first = fed_task(_base(label="edge"), SCENARIO, 0, out, 2)
    cached = list((tmp_path / "fed-teachers").rglob("*.pt"))
    assert first["teacher"] == "trained in this run" and len(cached) == 1
    assert cached[0].name == "0to1+2_seed0.pt"
    cloud = fed_task(_base("fed.teacher_placement=cloud", label="cloud"), SCENARIO, 0, out, 2)
    assert cloud["teacher"] == "cached" and cloud["teacher_placement"] == "cloud"
    again = fed_task(_base(label="edge-again"), SCENARIO, 0, out, 2)
    assert again["teacher"] == "cached"
    assert (again["mf1"], again["bytes_up"], again["bytes_down"]) == \
        (first["mf1"], first["bytes_up"], first["bytes_down"])
    assert list((tmp_path / "fed-teachers").rglob("*.pt")) == cached  # nothing trained twice
    # each edge's MF1 on its own target domain (per-domain: edge i holds the i-th target)
    assert set(first["mf1_per_edge"]) == {"1", "2"}
    assert all(0.0 <= v <= 100.0 for v in first["mf1_per_edge"].values())
    assert again["mf1_per_edge"] == first["mf1_per_edge"]


def test_the_cache_key_ignores_only_where_the_teacher_runs():
    key = lambda *sets: fed_teacher_key(load_config(None, [*SETS, *sets]))  # noqa: E731
    assert key() == key("fed.teacher_placement=cloud") == key("out=elsewhere")
    assert key() != key("fed.teacher_placement=source-only")
    assert key() != key("teacher.epochs=2") != key("distill.grl_ramp=false")
    assert key() != key("seed=1") and key() != key("fed.clients=4")


def test_the_cache_refuses_dp(tmp_path):
    with pytest.raises(UnikdError, match="privacy ledger"):
        fed_task(_base("fed.dp=central", label="dp"), SCENARIO, 0, str(tmp_path), 2)


def test_one_clients_scores_are_the_federation_scores():
    import torch

    from server.fed.rounds import confusion_scores
    from shared.unikd.metrics import macro_f1

    conf = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    y_true = torch.tensor([0] * 6 + [1] * 6 + [2] * 4)
    y_pred = torch.tensor([0] * 5 + [1] + [0] * 2 + [1] * 3 + [2] + [2] * 4)
    assert confusion_scores(conf) == (macro_f1(y_true, y_pred, 3), 100.0 * 12 / 16)


def test_the_cache_key_ignores_the_students_ema():
    """The EMA averages the student after the teacher is trained: EMA on and off share one."""
    key = lambda *sets: fed_teacher_key(load_config(None, [*SETS, *sets]))  # noqa: E731
    assert key() == key("distill.ema_decay=0.9")


def test_the_cache_key_follows_the_teachers_own_local_steps_not_the_students():
    key = lambda *sets: fed_teacher_key(load_config(None, [*SETS, *sets]))  # noqa: E731
    both = ("fed.local_steps_mode=both",)
    # L=10 gives the teacher 5 steps per exchange: the same teacher as L=1 with 5 of its own
    assert key(*both, "fed.local_steps=10") == key(*both, "fed.local_steps=1",
                                                   "fed.teacher_local_steps=5")
    assert key(*both, "fed.local_steps=10") != key(*both, "fed.local_steps=2")
    assert key(*both, "fed.server_step=repeat") == key(*both, "fed.teacher_server_step=repeat")
    assert key(*both) != key(*both, "fed.teacher_server_step=repeat")
    assert key(*both) == key(*both, "fed.evaluation=exchange")
    edge = ("fed.local_steps_mode=edge",)  # one step per teacher exchange whatever L
    assert key(*edge, "fed.local_steps=1") == key(*edge, "fed.local_steps=3")
    assert key(*edge) != key(*both, "fed.local_steps=1")
