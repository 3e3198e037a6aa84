"""The secure-by-default deployment with real processes: an offline CA, a SuperLink on loopback
behind the Caddy proxy, two edges (keys made "on the device", TLS + node auth) that run only
bundles the operator signed, through our warm executor.

From the public port only the Fleet API and /health answer; a signed run trains to the
simulation's numbers; unsigned and foreign-signed bundles are refused on the edges, which say
why, and the run fails without any bundle code having run there.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client.node.supernode import EdgeConfig, EdgeProcess, generate_key, start_edge
from server.deploy.cloud_config import CloudConfig
from server.deploy.flwr_cli import FlwrCli
from server.deploy.run_overrides import config_overrides
from server.deploy.submit import submit
from server.deploy.superlink import CloudProcesses, start_cloud
from shared.cli.main import main
from shared.config import load_config
from deploy_kit import prepare_operator
from shared.platform.processes import free_port, group_members

ONE_ROUND = ["fed.clients=2", "fed.rounds=1"]
# The edges ask the cloud for work every 0.3 s (default 0.1): each ask costs the SuperLink a
# TLS request, and an idle deployment at 0.1 s keeps half of a 2-core box busy.
NODE_POLL = 0.3
TASK_POLL = 0.2  # the executor asks its node for tasks 5 times a second (default 20)


@dataclass
class Secure:
    root: Path
    cloud: CloudProcesses
    cli: FlwrCli  # unsigned: the loopback Control API as the cloud host sees it
    teacher: Path
    op_key: Path
    edges: list[EdgeProcess] = field(default_factory=list)


def _edge_data(root: Path, client: int) -> Path:
    from client.node.local_data import write_device_folder

    return write_device_folder(root, client, 2, load_config(overrides=ONE_ROUND))


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    # The operator's machine: the CA and the app key stay there; the cloud gets three files.
    teacher, op_key = prepare_operator(root)
    state = root / "cloud"
    cloud, dep = None, None
    try:
        cloud = start_cloud(CloudConfig(state, host="127.0.0.1", port=free_port(),
                                        link_port=free_port(), dashboard_port=free_port()))
        dep = Secure(root, cloud, cloud.cli(), teacher, op_key)
        for i in range(2):  # node keys are made on the devices; only .pub reaches the cloud
            pub = generate_key(root / f"device-{i}" / "node.key")
            dep.cli.register(pub, f"edge-{i}")
            cfg = EdgeConfig(cloud.address, _edge_data(root, i), ca=root / "trust" / "ca.crt",
                             key=root / f"device-{i}" / "node.key", client_id=i,
                             port=free_port(), home=root / f"device-{i}" / "home",
                             app_key=root / "op.key.pub", node_poll=NODE_POLL,
                             task_poll=TASK_POLL)
            dep.edges.append(start_edge(cfg, root / f"edge-{i}.log"))
        deadline = time.monotonic() + 90
        while len(dep.cli.online_nodes()) < 2:
            assert time.monotonic() < deadline, [e.log_tail() for e in dep.edges]
            time.sleep(0.3)
        yield dep
    finally:
        groups = set()
        for e in (dep.edges if dep else []):
            groups.add(e.pid)
            e.stop()
        if cloud is not None:
            groups |= cloud.groups
            cloud.stop()
        left = {g: group_members(g) for g in groups}
        assert not any(left.values()), f"processes left behind: {left}"


def _call(address: str, path: str, ca: Path, method: str = "POST") -> int:
    req = urllib.request.Request(f"https://{address}{path}", method=method,
                                 data=b"" if method == "POST" else None,
                                 headers={"content-type": "application/protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=10,
                                    context=ssl.create_default_context(cafile=str(ca))) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_public_port_carries_the_fleet_api_and_health_only(secure):
    ca, public = secure.root / "trust" / "ca.crt", secure.cloud.address
    assert _call(public, "/health", ca, "GET") == 200
    refused = {p: _call(public, p, ca) for p in (
        "/v1/control/list-runs", "/v1/control/start-run", "/v1/control/register-node",
        "/v1/runtime/acquire-task", "/v1/fleet/register-node")}
    refused["/docs"] = _call(public, "/docs", ca, "GET")
    refused["/openapi.json"] = _call(public, "/openapi.json", ca, "GET")
    assert all(not 200 <= code < 300 for code in refused.values()), refused
    assert refused["/v1/control/list-runs"] == refused["/v1/runtime/acquire-task"] == 404
    # The same anonymous call is answered on loopback: the proxy is what keeps it private.
    assert _call(secure.cloud.cfg.control_address, "/v1/control/list-runs", ca) == 200


def test_signed_run_trains_through_the_proxy(secure, tmp_path):
    from server.fed.run import run_inprocess

    overrides = ONE_ROUND + [f"teacher.checkpoint={secure.teacher}"]
    code = main(["submit", "--state-dir", str(secure.cloud.cfg.state_dir), "--sign-key",
                 str(secure.op_key), "--out", str(tmp_path),
                 *[a for o in overrides for a in ("--set", o)]])
    (run_dir,) = tmp_path.iterdir()
    assert code == 0, (run_dir / "server.log").read_text()
    summary = json.loads((run_dir / "results.json").read_text())
    assert summary["clients"] == 2 and summary["rejected_updates"] == 0
    sim = run_inprocess(load_config(overrides=overrides), progress=False)
    assert summary["mf1"] == sim.final["mf1"] and summary["acc"] == sim.final["acc"]
    for edge in secure.edges:  # after the first task, tasks fork with the bundle imported
        assert "its ClientApp imported once" in edge.output(), edge.log_tail()
        assert "forked by the warm process of bundle" in edge.output(), edge.log_tail()


def test_unsigned_and_foreign_signed_bundles_are_refused_on_the_edges(secure, tmp_path):
    from shared.platform.app_signing import generate_key as app_keygen

    app_keygen(tmp_path / "mallory.key")
    overrides = config_overrides(None, ONE_ROUND + [f"teacher.checkpoint={secure.teacher}"])
    home = secure.cloud.cfg.state_dir / "cli-home"
    installs = [e.output().count("Successfully installed") for e in secure.edges]
    mallory = FlwrCli(secure.cloud.cfg.control_address, secure.cloud.cfg.ca, home,
                      sign_key=tmp_path / "mallory.key")  # signs with a key edges do not trust
    for cli, why in ((secure.cli, "the run carries no app signature"),
                     (mallory, "the app signature does not verify")):
        res = submit(cli, overrides, tmp_path / "runs", timeout=300)
        assert res.status == "finished:failed", res
        server_log = (res.run_dir / "server.log").read_text()
        assert f"app refused: {why}" in server_log  # the edges' error replies reach the cloud
        trusted = Path(f"{secure.op_key}.pub").resolve()
        for edge in secure.edges:
            assert f"refused: {why}" in edge.output(), edge.log_tail()
            line = next(x for x in edge.output().splitlines() if f"refused: {why}" in x)
            assert line.endswith(f"; this edge runs only apps signed by --app-key {trusted}")
    # Refused before Flower installs (unpacks) the bundle, let alone imports it.
    assert [e.output().count("Successfully installed") for e in secure.edges] == installs
