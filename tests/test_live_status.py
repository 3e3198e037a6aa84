"""The run folder's live status records (server/fed/live_status.py) and what the dashboard folds
from them (server/watch/run_view.py), on a real in-process federation: the records carry the
run folder's own numbers, a reader sees only whole lines, and a bad record names its file and
line. The dashboard with real processes and a browser is tests/test_watch.py."""

from __future__ import annotations

import csv
import json

import pytest

from server.deploy.cloud_config import CloudConfig
from server.fed.live_status import STATUS_FILE, LiveStatus, Phase, RecordReader
from server.watch.cloud_state import CloudState, edge_liveness
from server.watch.run_view import RunView
from shared.config import load_config
from shared.errors import UnikdError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from server.fed.run import run_federate

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(overrides=["fed.clients=2", "teacher.epochs=1", "distill.epochs=2",
                                 "distill.batch_size=160", f"out={out}"])
    return run_federate(cfg, progress=False)


def test_the_records_carry_the_run_folders_numbers(run_dir):
    view = RunView(run_dir).refresh()
    rounds = list(csv.DictReader(open(run_dir / "rounds.csv")))
    evals = list(csv.DictReader(open(run_dir / "evals.csv")))
    summary = json.loads((run_dir / "results.json").read_text())
    assert view.state == "completed" and view.phase == "delivery"
    assert view.round == view.total == len(rounds) == summary["rounds"]
    assert [r["seconds"] for r in view.rounds] == [float(r["seconds"]) for r in rounds]
    assert [r["bytes_up"] for r in view.rounds] == [int(r["bytes_up"]) for r in rounds]
    assert [r["bytes_down"] for r in view.rounds] == [int(r["bytes_down"]) for r in rounds]
    assert [e["mf1"] for e in view.evals] == [float(e["mf1"]) for e in evals]
    assert view.evals[-1]["mf1"] == summary["mf1"] and view.exchanges == summary["exchanges"]
    assert sorted(view.evals[-1]["per_client"]) == ["0", "1"]  # each client's own MF1
    assert sorted(view.node_clients.values()) == [0, 1] and sum(view.windows.values()) > 0
    snap = view.snapshot()
    assert snap["evals"]["per_client"]["0"][-1] == float(evals[-1]["mf1_client_0"])
    assert snap["eta"] is None and snap["elapsed"] > 0  # ended: nothing left to estimate


def test_the_teacher_phase_is_recorded_with_its_progress(run_dir):
    lines = [json.loads(x) for x in (run_dir / STATUS_FILE).read_text().splitlines()]
    kinds = [x["kind"] for x in lines]
    assert kinds[:3] == ["start", "phase", "nodes"] and kinds[-1] == "end"
    teacher = next(x for x in lines if x["kind"] == "phase" and x["phase"] == "teacher")
    last = [x for x in lines if x["kind"] == "progress"][-1]
    assert last["round"] == last["total"] == teacher["total"] > 0  # the last round always


def test_a_reader_sees_whole_lines_only_and_a_bad_record_names_its_line(tmp_path):
    status = LiveStatus(tmp_path)
    status.write(Phase("unikd", 5))
    reader = RecordReader(tmp_path / STATUS_FILE)
    assert [type(r).__name__ for _, r in reader.new_records()] == ["Phase"]
    with open(tmp_path / STATUS_FILE, "a") as f:
        f.write('{"kind": "phase", "t": 1.0, "phase": "teach')  # a line being written
    assert reader.new_records() == []
    with open(tmp_path / STATUS_FILE, "a") as f:
        f.write('er", "total": 3, "colour": 1}\n')
    with pytest.raises(UnikdError, match=rf"{STATUS_FILE}:2: phase record with unknown keys "
                                         r"\['colour'\]"):
        reader.new_records()
    assert LiveStatus(None).path is None  # no run folder: writes nothing


def test_an_edge_is_gone_one_heartbeat_interval_after_its_last_beat():
    node = {"node-id": "1", "name": "e", "status": "online", "online-until": 120.0,
            "heartbeat-interval": 10.0, "patience": 2, "last-activated-at": "",
            "last-deactivated-at": ""}
    assert edge_liveness(node, now=109.0) == {"connected": True, "last_contact": 100.0,
                                              "heartbeat_interval": 10.0,
                                              "superlink_status": "online"}
    assert not edge_liveness(node, now=110.5)["connected"]  # the SuperLink still says online
    assert not edge_liveness({**node, "status": "offline"}, now=101.0)["connected"]


def test_runs_are_found_where_submit_puts_them_and_latest_is_the_newest(tmp_path, run_dir):
    nested = tmp_path / "runs" / "submit-x" / "20990101-000000-federate-late"
    nested.mkdir(parents=True)
    (nested / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    state = CloudState(tmp_path / "runs")
    assert state.view("latest").name == nested.name and state.view("latest").state == "starting"
    assert [r["name"] for r in state.runs()] == [nested.name]
    with pytest.raises(UnikdError, match="no run folder 'nope'"):
        state.view("nope")
    snap = state.snapshot()
    assert snap["edges"] == [] and "no cloud.json" in snap["edges_error"]


def test_the_dashboard_port_is_checked(tmp_path):
    with pytest.raises(UnikdError, match="--dashboard-port 8000 must differ"):
        CloudConfig(tmp_path, port=8000, dashboard_port=8000)
    with pytest.raises(UnikdError, match="--dashboard-port 70000: expected 0"):
        CloudConfig(tmp_path, dashboard_port=70000)
    assert CloudConfig(tmp_path, dashboard_port=0).dashboard_address is None
    assert CloudConfig(tmp_path).dashboard_address == "127.0.0.1:9095"
