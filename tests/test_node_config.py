"""The node config (client/node/node_config.py): declared once, written by `unikd edge`, read
back typed by the ClientApp, with a bad key named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from client.node.node_config import Budget, NodeConfig, read_node_config
from client.node.supernode import EdgeConfig, node_config
from shared.errors import UnikdError

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_what_the_edge_writes_flower_parses_back_to_the_same_config(tmp_path):
    full = NodeConfig(client_id=7, data_path=str(tmp_path / "data"), domain="3",
                      store_path=str(tmp_path / "s.db"), model_dir=str(tmp_path / "m"),
                      budget=Budget(2.5, 1e-6, tmp_path / "dp-ledger.json"), dp_reproducible=True)
    assert NodeConfig.from_node_config(parse_config_args([full.to_arg()])) == full
    assert NodeConfig.from_node_config(parse_config_args([NodeConfig().to_arg()])) == NodeConfig()


def test_the_edge_command_writes_its_settings_as_the_node_config(tmp_path):
    cfg = EdgeConfig("cloud:8000", tmp_path / "data", insecure=True, client_id=4,
                     home=tmp_path / "home", store=tmp_path / "s.db", model_dir=tmp_path / "m",
                     max_epsilon=3.0, allow_unsigned=True)
    parsed = NodeConfig.from_node_config(parse_config_args([node_config(cfg, "2")]))
    assert parsed == NodeConfig(client_id=4, data_path=str(tmp_path / "data"), domain="2",
                                store_path=str(tmp_path / "s.db"), model_dir=str(tmp_path / "m"),
                                budget=Budget(3.0, 1e-5, tmp_path / "home" / "dp-ledger.json"))


def test_the_simulators_keys_are_read_as_flower_sends_them():
    assert NodeConfig.from_node_config({"partition-id": "3", "num-partitions": "5"}).client_id == 3
    sim = {"partition-id": 2, "num-partitions": 5, "dp-reproducible": True}
    assert NodeConfig.from_node_config(sim) == NodeConfig(client_id=2, dp_reproducible=True)
    assert NodeConfig.from_node_config({"domain": 3}).domain == "3"  # domain=3, unquoted


@pytest.mark.parametrize("raw, key", [
    ({"store_path": "/data/s.db"}, "store_path"),  # a typo is not silently the simulation
    ({"partition-id": "two"}, "partition-id"),
    ({"partition-id": -1}, "partition-id"),
    ({"partition-id": True}, "partition-id"),
    ({"store-path": ""}, "store-path"),
    ({"model-dir": 5}, "model-dir"),
    ({"dp-reproducible": "yes"}, "dp-reproducible"),
    ({"max-epsilon": "lots"}, "max-epsilon"),
    ({"max-epsilon": -1.0}, "max-epsilon"),
])
def test_a_bad_node_config_is_an_error_naming_the_key(raw, key):
    with pytest.raises(UnikdError, match=f"node config {re.escape(key)}"):
        NodeConfig.from_node_config(raw)


def test_a_node_config_is_parsed_once_per_node():
    raw = {"partition-id": 1, "num-partitions": 2}
    first = read_node_config(raw)
    assert read_node_config(dict(raw)) is first and read_node_config(first) is first
    assert read_node_config({"partition-id": 2}).client_id == 2


def test_no_node_config_key_is_read_outside_the_typed_config():
    """Every ClientApp reader goes through read_node_config; no key is spelled anywhere else."""
    raw_read = re.compile(r"node_config(\[|\.get\(|\.items\(|\)\s*\[)|in (context\.)?node_config")
    offenders = [f"{path.relative_to(REPO_ROOT)}:{n}" for path in (REPO_ROOT / "client").rglob("*.py")
                 if path.name != "node_config.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if raw_read.search(line)]
    assert not offenders, offenders
