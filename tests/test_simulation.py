"""Flower's own simulation engine (Ray, real SuperNode contexts and serialisation) gives the
same numbers as the in-process harness the other tests use."""

from __future__ import annotations

import pytest
import torch

from server.fed_run import run_inprocess, run_ray
from shared.config import load_config


@pytest.mark.slow
def test_ray_simulation_matches_inprocess_harness(tmp_path):
    cfg = load_config(overrides=["distill.epochs=1", "teacher.epochs=1", "fed.clients=2",
                                 f"out={tmp_path}"])
    harness = run_inprocess(cfg, progress=False)
    ray = run_ray(cfg, tmp_path)
    assert ray.final["mf1"] == harness.final["mf1"]
    assert [r["src_loss"] for r in ray.rounds] == [r["src_loss"] for r in harness.rounds]
    for (name, a), b in zip(harness.cloud.nets.state_dict().items(),
                            ray.cloud.nets.state_dict().values()):
        assert torch.equal(a, b), name
