"""The in-process simulation on several cores (server/fed/worker_grid.py): real worker
processes, the same results bit for bit as the sequential in-process grid."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from flwr.app import Message, RecordDict

from server.fed.harness import FaultPlan, InProcessGrid, load_component
from server.fed.rounds import federate
from server.fed.run import run_inprocess
from server.fed.worker_grid import WorkerGrid, resolve_workers
from shared.config import load_config
from shared.errors import ConfigError, UnikdError
from shared.protocol import wire

APP = "client.node.client_app:app"
CLIENTS = 3
BASE = ["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128",
        f"fed.clients={CLIENTS}", "fed.rounds=3"]
TIMED = {"seconds", "wall_seconds"}  # wall-clock figures: the only things allowed to differ


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMED} for row in rows]


def assert_same_run(a, b) -> None:
    assert untimed(a.rounds) == untimed(b.rounds) and a.rounds
    assert untimed(a.evals) == untimed(b.evals) and a.evals
    assert a.exchanges == b.exchanges and a.rejected == b.rejected
    sa, sb = a.cloud.nets.state_dict(), b.cloud.nets.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]


def tapped(log: list):
    return lambda q, r: log.append((q.metadata.message_type, q.metadata.dst_node_id,
                                    r.has_error(), sorted(r.content.keys()) if r.has_content()
                                    else None))


def test_the_main_jobs_path_matches_the_sequential_grid_bit_for_bit():
    """run_inprocess with 2 workers for 3 clients (the cloud's process runs nodes 1000 and 1002,
    one worker 1001) against the sequential grid: every round row, every evaluation, the
    student's weights, the exchanges."""
    sequential = federate(InProcessGrid(load_component(APP), CLIENTS),
                          load_config(overrides=BASE), progress=False)
    parallel = run_inprocess(load_config(overrides=[*BASE, "fed.workers=2"]), progress=False)
    assert_same_run(sequential, parallel)


def test_faults_taps_and_kept_state_match_in_worker_processes():
    """Local BN (state kept on the nodes between rounds), dropout, stragglers and corrupted
    replies, the tap seeing every pair: the same draws, the same pairs in the same order."""
    overrides = [*BASE, "fed.bn_policy=local", "fed.rounds=4"]
    plan = FaultPlan(dropout=0.2, straggler=0.2, corrupt=0.3, seed=3)
    seq_taps: list = []
    seq_grid = InProcessGrid(load_component(APP), CLIENTS, faults=plan, tap=tapped(seq_taps))
    sequential = federate(seq_grid, load_config(overrides=overrides), progress=False)
    par_taps: list = []  # two worker processes, none in the cloud's: one holds 1000 and 1002
    with WorkerGrid(APP, CLIENTS, 2, faults=plan, tap=tapped(par_taps), in_cloud=False) as grid:
        parallel = federate(grid, load_config(overrides=overrides), progress=False)
        kept = {nid: grid.node_state_keys(nid) for nid in grid.node_ids}
    assert_same_run(sequential, parallel)
    assert grid.fault_log == seq_grid.fault_log and {f["fault"] for f in grid.fault_log} > {
        "dropout"}
    assert par_taps == seq_taps
    # the contexts live in the workers, kept across rounds as the sequential grid keeps them
    assert kept == {nid: sorted(seq_grid.contexts[nid].state.keys()) for nid in grid.node_ids}
    assert all(kept.values()), kept


def _bad_message(nid: int) -> Message:
    return Message(content=RecordDict(), dst_node_id=nid, message_type=wire.TRAIN, group_id="1")


def test_a_client_exception_is_an_error_reply_and_a_dead_worker_names_its_node():
    sequential = InProcessGrid(load_component(APP), 2)
    want = sequential.pull_messages(sequential.push_messages([_bad_message(1001)]))
    with WorkerGrid(APP, 2, 2) as grid:
        got = grid.pull_messages(grid.push_messages([_bad_message(1001)]))
        assert len(got) == len(want) == 1 and got[0].has_error()
        assert got[0].error.reason == want[0].error.reason
        assert got[0].metadata.src_node_id == 1001
        # the worker still serves its nodes after the client's failure; then it is killed
        assert grid.node_state_keys(1001) == []
        assert grid.worker_pid(1000) is None  # the cloud's own process runs node 1000
        os.kill(grid.worker_pid(1001), signal.SIGKILL)
        with pytest.raises(UnikdError, match="node 1001"):  # on sending, or on collecting
            grid.pull_messages(grid.push_messages([_bad_message(1001)]))
        with pytest.raises(UnikdError, match="broken"):  # and stays an error, never a hang
            grid.push_messages([_bad_message(1000)])
    assert not any(p.is_alive() for p in grid._procs.values())


def test_close_stops_the_workers():
    grid = WorkerGrid(APP, 3, 3)
    procs = list(grid._procs.values())
    assert len(procs) == 2 and grid.worker_pid(1000) is None
    assert grid.worker_pids == [grid.worker_pid(1001), grid.worker_pid(1002)]  # by share
    assert all(p.is_alive() for p in procs)
    grid.close()
    grid.close()  # idempotent
    assert not any(p.is_alive() for p in procs)
    with pytest.raises(UnikdError, match="closed"):
        grid.push_messages([_bad_message(1000)])


def test_the_workers_key():
    fed = load_config().fed
    assert fed.workers == 0 and resolve_workers(fed) == min(fed.clients, (os.cpu_count() or 1) + 1)
    assert resolve_workers(load_config(overrides=["fed.workers=1"]).fed) == 1
    assert resolve_workers(load_config(overrides=["fed.workers=64", "fed.clients=5"]).fed) == 5
    for bad in ("-1", "1025"):
        with pytest.raises(ConfigError, match="fed.workers"):
            load_config(overrides=[f"fed.workers={bad}"])
    # an execution setting: the config's hash (resumes, cached teachers) ignores it
    assert load_config(overrides=["fed.workers=2"]).hash() == load_config().hash()
