"""Faults, simulated and seeded (issue 6, part 3): dropout, stragglers, corrupted replies, robust
aggregation, bad local data on a node, and a killed server process resumed from its checkpoint."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from server.fed.aggregate import (ClientUpdate, grad_norm, parse_aggregator, reject_outliers,
                              robust_combine, trimmed_mean)
from server.fed.harness import CORRUPTIONS, FaultPlan, InProcessGrid, load_component
from server.fed.rounds import federate
from shared.protocol import wire
from shared.config import load_config
from shared.errors import ConfigError

CLIENTS = 3
ROUNDS = 4
BASE = ("distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128",
        f"fed.clients={CLIENTS}", f"fed.rounds={ROUNDS}", "fed.teacher_placement=source-only",
        "fed.local_steps_mode=edge", "fed.local_steps=1")  # a round per step
REPO = Path(__file__).resolve().parents[1]


def run(*overrides: str, faults: FaultPlan | None = None, node_config=None):
    cfg = load_config(overrides=[*BASE, *overrides])
    grid = InProcessGrid(load_component("client.node.client_app:app"), CLIENTS, faults=faults,
                         node_config=node_config)
    return federate(grid, cfg, progress=False), grid


def state(result) -> dict[str, torch.Tensor]:
    return result.cloud.nets.state_dict()


def same_state(a, b) -> bool:
    sa, sb = state(a), state(b)
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- the fault plan


def test_fault_draws_depend_only_on_seed_round_and_node():
    plan = FaultPlan(dropout=0.3, straggler=0.1, corrupt=0.1, seed=4)
    draws = {(r, n): plan.draw(r, n) for r in range(1, 201) for n in range(1000, 1010)}
    again = {(r, n): plan.draw(r, n) for r, n in reversed(list(draws))}
    assert draws == again
    assert draws != {k: FaultPlan(0.3, 0.1, 0.1, seed=5).draw(*k) for k in draws}
    share = {f: sum(v == f for v in draws.values()) / len(draws)
             for f in ("dropout", "straggler", *CORRUPTIONS)}
    assert 0.27 < share["dropout"] < 0.33
    assert 0.05 < share["straggler"] < 0.09  # 0.1 of the 70% not dropped
    assert 0.04 < sum(share[k] for k in CORRUPTIONS) < 0.08
    assert all(share[k] > 0 for k in CORRUPTIONS)
    assert FaultPlan().draw(1, 1000) is None


def test_config_faults_reach_the_harness():
    cfg = load_config(overrides=["fed.dropout=0.5", "fed.corrupt_fraction=0.1"])
    plan = FaultPlan.from_config(cfg.fed, 9)
    assert (plan.dropout, plan.straggler, plan.corrupt, plan.seed) == (0.5, 0.0, 0.1, 9)
    assert FaultPlan.from_config(load_config().fed, 0) is None
    with pytest.raises(ConfigError):
        load_config(overrides=["fed.dropout=1.5"])


# ---------------------------------------------------------------- dropout and stragglers


def test_dropout_rounds_use_the_nodes_that_answered_and_are_reproducible():
    res, grid = run("fed.dropout=0.4", "seed=1")
    dropped = {(f["round"], f["node"]) for f in grid.fault_log if f["fault"] == "dropout"}
    assert dropped, "seed 1 drops somebody"
    applied = {row["round"]: row["clients"] for row in res.rounds}
    for rnd in range(1, ROUNDS + 1):
        answered = CLIENTS - sum(r == rnd for r, _ in dropped)
        assert applied.get(rnd, 0) == answered  # skipped (absent) only when nobody answered
    assert res.rejected == []  # a missing reply is not a bad reply
    again, grid2 = run("fed.dropout=0.4", "seed=1")
    assert grid2.fault_log == grid.fault_log and same_state(res, again)
    assert "mf1" in res.final


def test_stragglers_compute_but_their_late_replies_are_dropped():
    res, grid = run("fed.bn_policy=local", faults=FaultPlan(straggler=0.5, seed=2))
    late = [(f["round"], f["node"]) for f in grid.fault_log]
    assert late and all(f["fault"] == "straggler" for f in grid.fault_log)
    for rnd in range(1, ROUNDS + 1):
        row = next((r for r in res.rounds if r["round"] == rnd), None)
        n = CLIENTS - sum(r == rnd for r, _ in late)
        assert (row["clients"] if row else 0) == n
    for _, node in late:  # the straggler ran its round: its node-local state exists
        assert "bn-local" in grid.contexts[node].state


def test_too_few_replies_skip_the_round_with_a_clear_log(caplog):
    with caplog.at_level(logging.WARNING, logger="server.fed.rounds"):
        res, _ = run(f"fed.min_clients={CLIENTS}", faults=FaultPlan(dropout=0.3, seed=0))
    text = [r.getMessage() for r in caplog.records]
    skipped = [t for t in text if "round skipped" in t]
    assert skipped and len(res.rounds) == ROUNDS - len(skipped)
    assert any("nodes replied within the timeout" in t for t in text)
    assert all(row["clients"] == CLIENTS for row in res.rounds)


# ---------------------------------------------------------------- corrupted replies


@dataclass(frozen=True)
class CorruptAsDropout(FaultPlan):
    """The same draws, but every corrupted reply is replaced by a missing one."""

    def draw(self, rnd: int, node: int) -> str | None:
        fault = super().draw(rnd, node)
        return "dropout" if fault in CORRUPTIONS else fault


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_is_rejected_with_client_and_round(kind, caplog):
    plan = FaultPlan(corrupt=0.5, seed=3, kinds=(kind,))
    agg = ("fed.aggregator=norm-bounded:3",) if kind == "huge" else ()
    with caplog.at_level(logging.WARNING):
        res, grid = run(*agg, faults=plan)
    hits = [(f["round"], f["node"] - 1000) for f in grid.fault_log]
    assert hits and len(res.rejected) == len(hits)
    expect = {"nan": "NaN or Inf", "shape": "shape", "huge": "exceeds 3 x the median",
              "stale": "stale reply"}[kind]
    for (rnd, client), text in zip(hits, res.rejected):
        assert f"client {client}, round {rnd}" in text and expect in text, text
    assert sum(expect in r.getMessage() for r in caplog.records) >= len(hits)
    # never poisons the master: bit-identical to the run where those replies never came
    clean, _ = run(*agg, faults=CorruptAsDropout(corrupt=0.5, seed=3, kinds=(kind,)))
    assert same_state(res, clean)


def test_huge_update_poisons_the_plain_mean_but_not_norm_bounded():
    plan = FaultPlan(corrupt=0.3, seed=3, kinds=("huge",))
    plain, _ = run(faults=plan)
    bounded, _ = run("fed.aggregator=norm-bounded:3", faults=plan)
    assert plain.rejected == [] and bounded.rejected
    ref, _ = run("fed.aggregator=norm-bounded:3", faults=CorruptAsDropout(corrupt=0.3, seed=3,
                                                                          kinds=("huge",)))
    assert same_state(bounded, ref) and not same_state(plain, ref)


# ---------------------------------------------------------------- robust aggregators


def _u(client: int, value: float, n: int = 10) -> ClientUpdate:
    arrays = {k: {"w": torch.full((4,), value)} for k in wire.GRAD_RECORDS}
    arrays[wire.STUDENT_BN] = {"m": torch.full((2,), float(client))}
    return ClientUpdate(client, n, arrays, {})


def test_parse_aggregator():
    assert parse_aggregator("mean") == ("mean", 0.0)
    assert parse_aggregator("trimmed-mean:0.1") == ("trimmed-mean", 0.1)
    assert parse_aggregator("norm-bounded:3.0") == ("norm-bounded", 3.0)
    for bad in ("median", "trimmed-mean:0.5", "trimmed-mean:x", "norm-bounded:0.5", "mean:1"):
        with pytest.raises(ConfigError, match="fed.aggregator"):
            parse_aggregator(bad)
    with pytest.raises(ConfigError):
        run("fed.aggregator=median")


def test_trimmed_mean_drops_the_extremes_per_coordinate():
    ups = [_u(0, 1.0), _u(1, 2.0), _u(2, 3.0), _u(3, 1000.0), _u(4, -1000.0)]
    assert torch.allclose(trimmed_mean(ups, wire.D_F_GRAD, 0.2)["w"], torch.full((4,), 2.0))
    assert torch.allclose(trimmed_mean(ups, wire.D_F_GRAD, 0.0)["w"], torch.full((4,), 1.2))
    (agg,) = robust_combine(ups, "trimmed-mean:0.2")
    assert torch.allclose(agg.arrays[wire.STUDENT_GRAD]["w"], torch.full((4,), 2.0))
    assert torch.allclose(agg.arrays[wire.STUDENT_BN]["m"], torch.full((2,), 2.0))  # weighted
    assert robust_combine(ups, "mean") is ups


def test_norm_bounded_rejects_far_larger_updates():
    ups = [_u(0, 1.0), _u(1, 1.1), _u(2, 50.0)]
    kept, errors = reject_outliers(ups, "norm-bounded:3", 7)
    assert [u.client for u in kept] == [0, 1] and len(errors) == 1
    assert "client 2, round 7" in str(errors[0])
    assert reject_outliers(ups, "mean", 7) == (ups, [])
    alone = [_u(2, 50.0)]  # one reply: the recent rounds' medians are the reference
    assert reject_outliers(alone, "norm-bounded:3", 7)[0] == alone
    assert reject_outliers(alone, "norm-bounded:3", 7, [grad_norm(_u(0, 1.0))])[0] == []


def test_trimmed_mean_federation_runs():
    res, _ = run("fed.aggregator=trimmed-mean:0.34")
    assert len(res.rounds) == ROUNDS and "mf1" in res.final
    assert not same_state(res, run()[0])


# ---------------------------------------------------------------- bad local data on a node


def test_node_with_nan_file_reports_an_error_naming_the_file(make_domain_file, caplog):
    x = torch.randn(8, 9, 128)
    x[3, 2, 7] = float("nan")
    bad = make_domain_file(x, domain="1")

    def node_config(i: int) -> dict:
        conf = {"partition-id": i, "num-partitions": CLIENTS}
        return {**conf, "data-path": str(bad.parent), "domain": "1"} if i == 1 else conf

    seen = []
    cfg = load_config(overrides=list(BASE))
    grid = InProcessGrid(load_component("client.node.client_app:app"), CLIENTS, node_config=node_config,
                         tap=lambda req, rep: seen.append((req.metadata.dst_node_id, rep)))
    with caplog.at_level(logging.WARNING):
        res = federate(grid, cfg, progress=False)
    for node, reply in seen:
        assert reply.has_error() == (node == 1001)
        if node == 1001:
            assert str(bad) in reply.error.reason and "NaN" in reply.error.reason
    assert [row["clients"] for row in res.rounds] == [CLIENTS - 1] * ROUNDS
    logs = [r.getMessage() for r in caplog.records]
    for rnd in range(1, ROUNDS + 1):
        assert any(f"node 1001, round {rnd}" in t and str(bad) in t for t in logs), rnd
    assert any("1001" in t and "count query" in t and str(bad) in t for t in logs)


# ---------------------------------------------------------------- crash recovery


def _cli(out: Path | None, *extra: str) -> list[str]:
    sets = ["distill.epochs=2", "teacher.epochs=1", "teacher.batch_size=128",
            "fed.teacher_placement=source-only", "fed.clients=2", "fed.checkpoint_every=2",
            f"out={out}"] if out is not None else []
    return [sys.executable, "-c", "from shared.cli.main import main; raise SystemExit(main())",
            "federate", "--quiet", *[a for s in sets for a in ("--set", s)], *extra]


def _rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader((run_dir / "rounds.csv").open()))


def test_killed_server_resumes_from_its_checkpoint_without_losing_rounds(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    full = subprocess.run(_cli(tmp_path / "full"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    (full_dir,) = (tmp_path / "full").iterdir()

    proc = subprocess.Popen(_cli(tmp_path / "crash"), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        ckpt = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((tmp_path / "crash").glob("*/checkpoints/last.pt"))
            if found:
                ckpt = found[0]
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole server process group, mid-run
    finally:
        proc.wait(timeout=60)
    assert ckpt is not None, "no checkpoint appeared"
    run_dir = ckpt.parents[1]
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    total = int(json.loads((full_dir / "results.json").read_text())["rounds"])
    assert 2 <= saved["round"] < total and not (run_dir / "results.json").exists()
    kept = saved["rounds"]  # what was completed and checkpointed before the kill

    resumed = subprocess.run(_cli(None, "--resume", str(run_dir)), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)  # its config.yaml
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    a = json.loads((full_dir / "results.json").read_text())
    b = json.loads((run_dir / "results.json").read_text())
    assert (b["rounds"], b["mf1"]) == (a["rounds"], a["mf1"])
    rows, ref = _rows(run_dir), _rows(full_dir)
    assert [int(r["round"]) for r in rows] == list(range(1, total + 1))
    # all but timing and bytes (a restarted server sends the teacher to each node once more)
    strip = lambda rs: [{k: v for k, v in r.items()  # noqa: E731
                         if k != "seconds" and not k.startswith("bytes")} for r in rs]
    assert strip(rows) == strip(ref)
    assert [r["src_loss"] for r in kept] == [float(r["src_loss"]) for r in rows[:len(kept)]]
