"""The edge's own privacy budget (client/node/budget.py, issue 13): a node whose operator set
`max-epsilon` composes every release onto its own ledger, agrees with the cloud's accounting,
and refuses the release that would pass its budget, or any round that is not record-level DP."""

from __future__ import annotations

import csv
import json
import math

import pytest

import server.fed.run as run_mod
from client.node import budget
from client.node.node_config import DEFAULT_DELTA, LEDGER_KEY, MAX_EPSILON_KEY, Budget, NodeConfig
from server.fed.run import run_federate
from shared.config import load_config
from shared.errors import UnikdError
from shared.privacy.accounting import RDP_ORDERS, add_rdp, count_rdp, epsilon_from_rdp, record_epsilon, \
    step_rdp

RECORD_RUN = ["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128", "fed.clients=2",
              "fed.rounds=3", "fed.dp=record", "fed.dp_epsilon=8",
              "fed.workers=1"]  # the sequential grid, which _with_node_config replaces


def _with_node_config(monkeypatch, extra: dict[int, dict]) -> None:
    """The in-process Grid, with operator-set keys in some nodes' configs."""
    from server.fed.harness import InProcessGrid as real

    def grid(app, n, **kw):
        def node_config(i: int) -> dict:
            return {"partition-id": i, "num-partitions": n, "dp-reproducible": True,
                    **extra.get(i, {})}
        return real(app, n, node_config=node_config, **kw)

    monkeypatch.setattr(run_mod, "InProcessGrid", grid)


def _cloud_epsilons(run_dir, client: str) -> list[float]:
    rows = csv.DictReader((run_dir / "privacy_ledger.csv").open())
    return [float(r["epsilon"]) for r in rows if r["client"] == client]


def test_node_ledger_matches_the_cloud_and_refuses_past_its_budget(tmp_path, monkeypatch):
    # Prepare: the same record-DP run without a budget, for the cloud's per-round epsilons
    free = run_federate(load_config(overrides=[*RECORD_RUN, f"out={tmp_path / 'free'}"]),
                        progress=False)
    cloud = _cloud_epsilons(free, "1")
    assert len(cloud) >= 4 and cloud == sorted(cloud)
    cap = (cloud[-2] + cloud[-1]) / 2  # room for every release but the last
    ledger = tmp_path / "edge-1" / "dp-ledger.json"
    _with_node_config(monkeypatch, {1: {MAX_EPSILON_KEY: cap,
                                        LEDGER_KEY: str(ledger)}})
    # Act
    capped = run_federate(load_config(overrides=[*RECORD_RUN, f"out={tmp_path / 'capped'}"]),
                          progress=False)
    # Assert: the node stopped inside its budget, at the cloud's own figure for it
    data = json.loads(ledger.read_text())
    spent = epsilon_from_rdp(tuple(data["rdp"]), DEFAULT_DELTA)
    assert spent <= cap and spent == pytest.approx(cloud[-2], rel=1e-6)
    assert ledger.stat().st_mode & 0o777 == 0o600
    query, *trains = data["entries"]
    assert query["what"] == "count query" and query["count"] and not query["steps"]
    assert len(trains) == len(cloud) - 1 and not any(e["count"] for e in trains)
    assert all(e["z"] > 0 and 0 < e["q"] <= 1 for e in trains)
    rows = list(csv.DictReader((capped / "rounds.csv").open()))
    assert rows[-1]["clients"] == "1"  # the last round went on without the refusing node
    results = json.loads((capped / "results.json").read_text())
    assert results["rejected_updates"] >= 1
    # and in a second run on the same ledger the node trains no more (the budget spans runs)
    _with_node_config(monkeypatch, {0: {MAX_EPSILON_KEY: cap,
                                        LEDGER_KEY: str(ledger)}})
    try:
        run_federate(load_config(overrides=[*RECORD_RUN, "fed.clients=1",
                                            f"out={tmp_path / 'again'}"]), progress=False)
    except UnikdError as err:  # with its only node refusing, the run may end without one
        assert "client" in str(err) or "node" in str(err), err
    after = json.loads(ledger.read_text())
    new = after["entries"][len(data["entries"]):]
    assert [e["what"] for e in new] == ["count query"]  # its count fit; no step did
    assert epsilon_from_rdp(tuple(after["rdp"]), DEFAULT_DELTA) <= cap


def test_a_budgeted_node_refuses_rounds_that_are_not_record_dp(tmp_path, monkeypatch):
    _with_node_config(monkeypatch, {0: {MAX_EPSILON_KEY: 100.0}})
    cfg = load_config(overrides=["distill.epochs=1", "teacher.epochs=1", "fed.clients=2",
                                 "fed.rounds=2", "fed.workers=1", f"out={tmp_path}"])
    run_dir = run_federate(cfg, progress=False)
    rows = list(csv.DictReader((run_dir / "rounds.csv").open()))
    assert rows and all(r["clients"] == "1" for r in rows)  # node 0 never trained


def test_the_ledger_composes_what_the_accountant_composes():
    z, std, q, delta = 1.1, 20.0, 0.13, 1e-5
    total = add_rdp(count_rdp(std), step_rdp(q, z), 40)
    assert epsilon_from_rdp(total, delta) == pytest.approx(
        record_epsilon(z, std, delta, ((q, 40),)), rel=1e-12)
    assert math.isinf(epsilon_from_rdp(add_rdp(total, step_rdp(q, 0.0)), delta))  # z=0: refused
    assert epsilon_from_rdp((0.0,) * len(RDP_ORDERS), delta) == 0.0


def test_bad_budget_settings_and_ledgers_are_errors_naming_them(tmp_path):
    assert NodeConfig.from_node_config({}).budget is None
    assert NodeConfig.from_node_config({"max-epsilon": 0}).budget is None
    with pytest.raises(UnikdError, match="max-epsilon"):
        NodeConfig.from_node_config({"max-epsilon": "lots"})
    with pytest.raises(UnikdError, match="dp-delta"):
        NodeConfig.from_node_config({"max-epsilon": 3.0, "dp-delta": 2.0})
    bad = tmp_path / "dp-ledger.json"
    bad.write_text("{not json")
    with pytest.raises(UnikdError, match=str(bad)):
        budget.read_ledger(bad)


def test_the_edge_command_hands_its_budget_to_the_node(tmp_path, make_domain_file):
    """`unikd edge --max-epsilon` becomes node-config keys Flower parses, with the ledger in the
    edge's home; a bad budget or a damaged ledger stops the edge before it starts."""
    from flwr.common.config import parse_config_args

    from client.node.supernode import EdgeConfig, node_config, validate
    from shared.errors import UnikdError

    make_domain_file(domain="3", folder=tmp_path / "data")
    cfg = EdgeConfig("cloud:8000", tmp_path / "data", insecure=True, home=tmp_path / "home",
                     max_epsilon=3.0, dp_delta=1e-6, allow_unsigned=True)
    parsed = parse_config_args([node_config(cfg, "3")])
    assert NodeConfig.from_node_config(parsed).budget == Budget(3.0, 1e-6,
                                                                tmp_path / "home" / "dp-ledger.json")
    assert validate(cfg) == "3"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dp-ledger.json").write_text("[]")
    with pytest.raises(UnikdError, match="dp-ledger.json"):
        validate(cfg)
    with pytest.raises(UnikdError, match="max-epsilon"):
        validate(EdgeConfig("cloud:8000", tmp_path / "data", insecure=True, max_epsilon=-1.0,
                            allow_unsigned=True))
