"""Real deployment: a SuperLink and two SuperNodes on 127.0.0.1 with TLS and node authentication.

The module fixture starts one secured cloud, registers two edge keys and starts two edges whose
data folders hold exactly the windows the simulator gives clients 0 and 1, so the deployed run
must end with the simulation's numbers. Every process runs in its own session and the fixture's
finally-block stops every group and checks that nothing is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from client.node.supernode import EdgeConfig, EdgeProcess, generate_key, node_config, start_edge, \
    supernode_command, validate
from server.deploy.certs import describe, init_all, make_ca, make_node_key
from server.deploy.cloud_config import CloudConfig
from server.deploy.flwr_cli import FlwrCli
from server.deploy.run_overrides import config_overrides
from server.deploy.submit import submit
from server.deploy.superlink import CloudProcesses, start_cloud, superlink_command
from shared.platform.app_signing import generate_key as generate_app_key
from shared.platform.processes import ProcessGroup, free_port, group_members, start_group
from shared.config import load_config
from shared.errors import UnikdError

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = ["fed.clients=2", "fed.rounds=2"]
# The edges ask the cloud for work every 0.3 s (default 0.1): each ask costs the SuperLink a
# TLS request, and an idle deployment at 0.1 s keeps half of a 2-core box busy.
NODE_POLL = 0.3
TASK_POLL = 0.2  # the executor asks its node for tasks 5 times a second (default 20)


# ---------------------------------------------------------------- fast checks (no Flower)


def test_certificates_chain_to_the_ca_and_name_the_server(tmp_path):
    from cryptography import x509

    init_all(tmp_path, ["cloud.example", "10.0.0.5", "localhost", "127.0.0.1"], ["edge-1"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    srv = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    srv.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    info = describe(tmp_path)
    assert {"cloud.example", "10.0.0.5", "localhost", "127.0.0.1"} <= set(info["server"]["names"])
    assert info["nodes"] == ["edge-1"]
    for secret in ("ca.key", "server.key", "nodes/edge-1"):
        assert (tmp_path / secret).stat().st_mode & 0o777 == 0o600, secret
    with pytest.raises(UnikdError, match="--force"):
        make_ca(tmp_path)


def test_node_keys_are_openssh_nist_ecdsa_on_both_sides(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (load_ssh_private_key,
                                                              load_ssh_public_key)

    priv, pub = make_node_key(tmp_path, "edge-7")
    dev_pub = generate_key(tmp_path / "device" / "node.key")  # made on the device itself
    for p_priv, p_pub in ((priv, pub), (tmp_path / "device" / "node.key", dev_pub)):
        key = load_ssh_private_key(p_priv.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert load_ssh_public_key(p_pub.read_bytes()) == key.public_key()
        assert p_priv.stat().st_mode & 0o777 == 0o600
    with pytest.raises(UnikdError, match="node name"):
        make_node_key(tmp_path, "../evil")


def test_superlink_defaults_are_secure_and_insecure_drops_auth(tmp_path):
    cmd = superlink_command(CloudConfig(tmp_path))
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation", "--database"):
        assert flag in cmd
    assert "--insecure" not in cmd
    insecure = superlink_command(CloudConfig(tmp_path, insecure=True))
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure
    assert "--disable-runtime-dependency-installation" in insecure


def test_cloud_makes_its_certificates_once_and_refuses_a_broken_folder(tmp_path):
    from server.deploy.cloud_certs import ensure_certs

    cfg = CloudConfig(tmp_path / "state", names=["cloud.lan"], dev_certs=True)
    made = ensure_certs(cfg)
    assert made == [str(cfg.paths.ca_crt), str(cfg.paths.server_crt)]
    assert {"cloud.lan", "localhost", "127.0.0.1"} <= set(describe(cfg.certs)["server"]["names"])
    assert ensure_certs(cfg) == []  # reused on every later start
    cfg.paths.ca_key.unlink()  # the CA key may go offline once the server cert exists
    assert ensure_certs(cfg) == []
    cfg.paths.server_crt.unlink()  # ...but then nothing can issue a new server certificate
    with pytest.raises(UnikdError, match="incomplete"):
        ensure_certs(cfg)


def test_config_file_travels_as_values(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("seed: 3\ndata:\n  scenario: '0->2'\ndistill:\n  lr: 0.005\n  target_kd: false\n")
    overrides = config_overrides(str(f), ["fed.clients=4", "distill.temperature=2.5"])
    assert load_config(None, overrides).to_dict() == \
        load_config(str(f), ["fed.clients=4", "distill.temperature=2.5"]).to_dict()
    with pytest.raises(UnikdError, match="spaces"):
        config_overrides(None, ["out=with space"])


def test_edge_refuses_a_setup_that_can_only_fail_later(tmp_path, make_domain_file):
    make_domain_file(domain="3", folder=tmp_path / "one")
    key = tmp_path / "node.key"
    generate_key(key)
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    ok = EdgeConfig("cloud:8000", tmp_path / "one", ca=ca, key=key, client_id=2,
                    app_key=generate_app_key(tmp_path / "op.key"))
    assert validate(ok) == "3"
    assert node_config(ok, "3") == f'data-path="{tmp_path / "one"}" domain="3" partition-id=2'
    cmd = supernode_command(ok)
    assert cmd[cmd.index("--root-certificates") + 1] == str(ca)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key)
    make_domain_file(domain="4", folder=tmp_path / "one")
    bad = [
        (EdgeConfig("cloud:8000", tmp_path / "one", ca=ca), "2 domains"),
        (EdgeConfig("cloud:8000", tmp_path / "one", ca=ca, domain="9"), "no train_9.pt"),
        (EdgeConfig("cloud:8000", tmp_path / "one", domain="3"), "CA certificate"),
        (EdgeConfig("cloud", tmp_path / "one", ca=ca, domain="3"), "HOST:PORT"),
        (EdgeConfig("cloud:8000", tmp_path / "one", insecure=True, key=key, domain="3"),
         "needs TLS"),
        (EdgeConfig("cloud:8000", tmp_path / "none", ca=ca), "not a folder"),
    ]
    for cfg, msg in bad:
        with pytest.raises(UnikdError, match=msg):
            validate(cfg)
    key.chmod(0o644)
    with pytest.raises(UnikdError, match="chmod 600"):
        validate(EdgeConfig("cloud:8000", tmp_path / "one", ca=ca, key=key, domain="3"))


def test_stopping_a_group_takes_its_children_along(tmp_path):
    proc = start_group("tree", ["sh", "-c", "sleep 60 & sleep 60 & wait"], tmp_path / "log",
                       dict(os.environ))
    deadline = time.monotonic() + 10
    while len(group_members(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(group_members(proc.pid)) == 3  # sh + two sleeps share the new group
    proc.stop()
    assert group_members(proc.pid) == []


def test_a_killed_launcher_takes_its_superlink_down(tmp_path):
    """SIGKILL on the process that started a group (no cleanup runs) still ends the child."""
    code = ("import os, sys, time; sys.path.insert(0, %r)\n"
            "from shared.platform.processes import start_group\n"
            "p = start_group('s', ['sleep', '60'], None, dict(os.environ))\n"
            "print(p.pid, flush=True); time.sleep(60)\n" % str(REPO_ROOT))
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        child = int(launcher.stdout.readline())
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(10)
        deadline = time.monotonic() + 10
        while group_members(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_members(child) == []
    finally:
        for pg in (launcher.pid,):
            try:
                os.killpg(pg, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_edge_side_installs_and_runs_without_cloud_code():
    """An edge install has shared/ and client/ only: block server/ (and the cloud-only
    dependencies) and the edge command and the ClientApp still load."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('server', 'matplotlib', 'ray', 'sklearn'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import client.node.client_app, client.node.commands\n"
        "from shared.cli.main import main\n"
        "sys.exit(main(['--help']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.split("positional arguments:")[1]
    assert " edge " in commands and "edge-keygen" in commands
    assert " submit " not in commands and " certs " not in commands  # cloud side is absent


def test_submit_refuses_run_config_keys_the_app_does_not_declare(tmp_path):
    cli = FlwrCli("127.0.0.1:1", None, tmp_path / "home")
    with pytest.raises(UnikdError, match="not declared"):
        submit(cli, [], tmp_path, extra_run_config={"no-such-key": "x"})
    with pytest.raises(UnikdError, match="own config"):
        submit(cli, ["seed=1"], tmp_path, resume="runs/x")


def test_cloud_command_insecure_warns_and_stops_cleanly(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "cloud", "--insecure", "--host", "127.0.0.1",
         "--port", str(port), "--link-port", str(free_port()), "--state-dir",
         str(tmp_path / "state")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    try:
        line = proc.stdout.readline()
        assert "SuperLink up" in line and "INSECURE" in line, line + proc.stderr.read()
        groups = ProcessGroup("cloud", proc).refresh()  # unikd, SuperLink, SuperExec
        assert len(groups) >= 3, groups
        info = json.loads((tmp_path / "state" / "cloud.json").read_text())
        assert info["insecure"] and not info["auth"] and info["ca"] is None
        os.kill(proc.pid, signal.SIGTERM)  # what systemd / docker stop send
        assert proc.wait(30) == 0
        assert "WARNING: --insecure" in proc.stderr.read()
    finally:
        ProcessGroup("cloud", proc).stop()
    assert {g: group_members(g) for g in groups} == {g: [] for g in groups}
    assert info["pid"] in groups  # the SuperLink's own group went too


# ---------------------------------------------------------------- the real deployment


@dataclass
class Deployment:
    root: Path
    cloud: CloudProcesses
    cli: FlwrCli
    teacher: Path
    edge_cfgs: list[EdgeConfig] = field(default_factory=list)
    edges: list[EdgeProcess] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # every process group started

    def start(self, cfg: EdgeConfig, name: str) -> EdgeProcess:
        proc = start_edge(cfg, self.root / f"{name}.log")
        self.groups.append(proc.pid)
        return proc

    def wait_online(self, want: int, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(online := self.cli.online_nodes()) < want:
            assert time.monotonic() < deadline, (self.cli.nodes(),
                                                 [e.log_tail() for e in self.edges])
            time.sleep(0.5)
        return online


def _edge_data(root: Path, client: int, clients: int) -> Path:
    """Client `client`'s simulated windows, written as the device folder it would hold."""
    from client.node.local_data import write_device_folder

    return write_device_folder(root, client, clients, load_config(overrides=FAST))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from server.central.teacher import save_teacher, train_teacher
    from shared.data.scenario import load_scenario

    root = tmp_path_factory.mktemp("deploy")
    tcfg = load_config(overrides=["teacher.epochs=1"])
    data = load_scenario(tcfg.data)
    teacher = root / "teacher.pt"
    save_teacher(teacher, train_teacher(tcfg, data, False, []), tcfg, data)

    cloud = None
    groups: list[int] = []
    dep = None
    try:
        cloud = start_cloud(CloudConfig(root / "cloud", host="127.0.0.1", port=free_port(),
                                        link_port=free_port(), dashboard_port=0,
                                        names=["localhost", "127.0.0.1"],
                                        dev_certs=True))
        groups.extend(cloud.groups)
        app_pub = generate_app_key(root / "app.key")  # edges run only bundles it signed
        dep = Deployment(root, cloud, cloud.cli(sign_key=root / "app.key"), teacher, groups=groups)
        for i in range(2):
            priv, pub = make_node_key(cloud.cfg.certs, f"edge-{i}")
            dep.cli.register(pub, f"edge-{i}")
            cfg = EdgeConfig(cloud.address, _edge_data(root, i, 2), ca=cloud.cfg.paths.ca_crt,
                             key=priv, client_id=i, port=free_port(), home=root / f"edge-{i}",
                             app_key=app_pub, node_poll=NODE_POLL,
                             task_poll=TASK_POLL)
            dep.edge_cfgs.append(cfg)
            dep.edges.append(dep.start(cfg, f"edge-{i}"))
        dep.wait_online(2)
        yield dep
    finally:
        for e in (dep.edges if dep else []):
            e.stop()
        clouds = {id(x): x for x in (cloud, dep.cloud if dep else None) if x}.values()
        for c in clouds:
            c.stop()  # the first cloud, and the restarted one
        every = set(groups).union(*(c.groups for c in clouds))
        left = {pg: group_members(pg) for pg in every}
        assert not any(left.values()), f"processes left behind: {left}"


def test_unregistered_node_is_refused(deployment):
    key = deployment.root / "rogue.key"
    generate_key(key)  # a valid key the cloud has never seen
    before = {n["node-id"] for n in deployment.cli.nodes()}
    cfg = EdgeConfig(deployment.cloud.address, deployment.edge_cfgs[0].data,
                     ca=deployment.cloud.cfg.paths.ca_crt, key=key, port=free_port(),
                     home=deployment.root / "rogue", max_retries=0,
                     app_key=deployment.edge_cfgs[0].app_key)
    proc = deployment.start(cfg, "rogue")
    try:
        assert proc.wait(60) != 0
    finally:
        proc.stop()
    assert proc.outcome() == "refused", proc.log_tail()
    assert {n["node-id"] for n in deployment.cli.nodes()} == before


def test_node_trusting_another_ca_cannot_connect(deployment):
    other = deployment.root / "other-ca"
    make_ca(other)  # the node's root certificate: not the one that signed the SuperLink's
    priv, pub = make_node_key(deployment.cloud.cfg.certs, "edge-x")
    node_id = str(deployment.cli.register(pub, "edge-x"))  # registered: only TLS can stop it
    with pytest.raises(UnikdError, match="already in use"):  # `unikd certs register` says so
        deployment.cli.register(pub, "edge-x-again")
    cfg = EdgeConfig(deployment.cloud.address, deployment.edge_cfgs[0].data,
                     ca=other / "ca.crt", key=priv, port=free_port(),
                     home=deployment.root / "edge-x", max_retries=0,
                     app_key=deployment.edge_cfgs[0].app_key)
    proc = deployment.start(cfg, "edge-x")
    try:
        assert proc.wait(60) != 0
    finally:
        proc.stop()
    assert proc.outcome() == "tls", proc.log_tail()
    status = {n["node-id"]: n["status"] for n in deployment.cli.nodes()}
    assert status[node_id] == "registered"  # never came online


def test_two_round_deployed_run_completes_with_the_simulations_numbers(deployment, tmp_path):
    from server.fed.run import run_inprocess

    overrides = FAST + [f"teacher.checkpoint={deployment.teacher}"]
    res = submit(deployment.cli, config_overrides(None, overrides), tmp_path / "runs",
                 state_dir=deployment.cloud.cfg.state_dir, timeout=400)
    assert res.status == "finished:completed", (res.run_dir / "server.log").read_text()
    summary = json.loads((res.run_dir / "results.json").read_text())
    assert summary["rounds"] == 2 and summary["clients"] == 2
    assert summary["rejected_updates"] == 0 and summary["bytes_up"] > 0
    for name in ("config.yaml", "rounds.csv", "evals.csv", "server.log", "deployment.json",
                 "checkpoints/final.pt"):
        assert (res.run_dir / name).is_file(), name

    sim = run_inprocess(load_config(overrides=overrides), progress=False)
    assert summary["mf1"] == sim.final["mf1"] and summary["acc"] == sim.final["acc"]
    rows = (res.run_dir / "rounds.csv").read_text().splitlines()
    header = rows[0].split(",")
    src = [float(r.split(",")[header.index("src_loss")]) for r in rows[1:]]
    assert src == [r["src_loss"] for r in sim.rounds]
    from shared.protocol.records import student_state

    final = torch.load(res.run_dir / "checkpoints" / "final.pt", weights_only=False)
    want = student_state(sim.cloud.reported_nets())  # final.pt: the reported (EMA) student
    assert final["student"].keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(final["student"][name], value), name


def test_failed_run_makes_submit_exit_nonzero(deployment, tmp_path):
    from shared.cli.main import main

    code = main(["submit", "--state-dir", str(deployment.cloud.cfg.state_dir), "--out",
                 str(tmp_path), "--set", "data.path=/nonexistent/unikd-data",
                 *[a for o in FAST for a in ("--set", o)]])  # fails at once on the cloud
    assert code == 1  # `flwr run --stream` alone would have exited 0
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "deployment.json").read_text())["status"] == "finished:failed"
    log = (run_dir / "server.log").read_text()
    assert "/nonexistent/unikd-data" in log and "ServerApp raised an exception" in log


def _checkpoint_round(runs: Path, after: float) -> tuple[int, Path | None, list]:
    """The newest cloud checkpoint written after `after`: (round, run folder, round rows)."""
    hits = [p for p in runs.glob("submit-*/*/checkpoints/last.pt") if p.stat().st_mtime > after]
    if not hits:
        return 0, None, []
    try:
        ckpt = torch.load(hits[0], map_location="cpu", weights_only=False)
    except Exception:  # being replaced right now (atomic rename): read it next time
        return 0, None, []
    return int(ckpt["round"]), hits[0].parents[1], list(ckpt["rounds"])


def test_edge_restart_rejoins_and_cloud_restart_resumes(deployment, tmp_path):
    """Edge 1 is stopped and started again: stopping it deactivates its node at the SuperLink
    at once (not ~60 s later, when its heartbeat would expire), and it rejoins with the same
    node id (its registered key) and trains in the run. Where the ServerApp takes `resume`,
    the cloud is then killed after round 3, restarted on the same state dir, and the run is
    continued from its last checkpoint to the end, right away: the dead run's ServerApp task
    expires on the SuperLink meanwhile (its own heartbeat, ~60 s), and its submit ends then.

    (Rounds take a second or two now, far less than the SuperLink's ~60 s heartbeat expiry, so
    the edge restart happens before the run rather than inside it; a node restarted mid-run
    being sent the teacher again is tests/test_device_loop.py's.)"""
    from server.deploy.submit import RESUME_KEY, app_config_keys, app_dir

    can_resume = RESUME_KEY in app_config_keys(app_dir())
    rounds = 5  # killed after round 3, resumed for the last 2
    overrides = ["fed.clients=2", f"fed.rounds={rounds}", "fed.checkpoint_every=1",
                 "fed.teacher_placement=cloud", f"teacher.checkpoint={deployment.teacher}"]
    online = {n["node-id"] for n in deployment.cli.online_nodes()}
    runs = deployment.cloud.cfg.state_dir / "runs"
    old = deployment.edges[1]
    old_id = re.search(r"SuperNode ID: (\d+)", old.output()).group(1)
    old.stop()
    deadline = time.monotonic() + 150
    while len(deployment.cli.online_nodes()) >= 2:  # the node id goes offline
        assert time.monotonic() < deadline, deployment.cli.nodes()
        time.sleep(0.5)
    link_log = (deployment.cloud.cfg.state_dir / "superlink.log").read_text(errors="replace")
    assert f"Deactivated node_id={old_id}" in link_log, old.log_tail()  # not left to expire
    deployment.edges[1] = deployment.start(deployment.edge_cfgs[1], "edge-1-restarted")
    deployment.wait_online(2, timeout=90)
    assert {n["node-id"] for n in deployment.cli.online_nodes()} == online  # same node id
    box: dict = {}

    def run():
        try:
            box["res"] = submit(deployment.cli, config_overrides(None, overrides),
                                tmp_path / "runs", state_dir=deployment.cloud.cfg.state_dir,
                                timeout=400, unreachable=60)
        except BaseException as exc:  # surfaced below
            box["err"] = exc

    def wait_round(k: int) -> tuple[Path, list]:
        deadline = time.monotonic() + 300
        while (got := _checkpoint_round(runs, started))[0] < k:
            assert th.is_alive() and time.monotonic() < deadline, box
            time.sleep(0.1)
        return got[1], got[2]

    started = time.time()
    th = threading.Thread(target=run)
    th.start()
    if can_resume:
        run_dir, rows = wait_round(3)
        assert rows[-1]["clients"] == 2, rows  # the restarted edge trains
        deployment.cloud.stop()  # the cloud dies (SuperLink, SuperExec, ServerApp)
        deployment.cloud = start_cloud(deployment.cloud.cfg)  # same state dir, same port
        deployment.groups.extend(deployment.cloud.groups)
        deployment.wait_online(2)  # registrations survived; the edges reconnected by themselves
        res = submit(deployment.cli, [], tmp_path / "resumed", timeout=400,
                     state_dir=deployment.cloud.cfg.state_dir,
                     resume=str(run_dir.relative_to(deployment.cloud.cfg.state_dir)))
        th.join(420)  # the killed run's submit: done once the SuperLink expired its task
        assert not th.is_alive()
        assert "err" in box or box["res"].status != "finished:completed", box
    else:  # the ServerApp cannot resume yet: the edge part only
        th.join(420)
        assert "err" not in box, box.get("err")
        res = box["res"]
    assert res.status == "finished:completed", (res.run_dir / "server.log").read_text()
    rows = (res.run_dir / "rounds.csv").read_text().splitlines()
    header = rows[0].split(",")
    clients = [int(r.split(",")[header.index("clients")]) for r in rows[1:]]
    assert len(clients) == rounds and all(c == 2 for c in clients), clients
    assert {n["node-id"] for n in deployment.cli.online_nodes()} == online
    assert deployment.edges[1].pid != old.pid


def test_a_late_edge_joins_the_next_cohort_and_gets_the_student(deployment, tmp_path):
    """Cross-device, deployed (issue 27): round 1 starts with the two edges online
    (`fed.min_available=2`), each round takes every node available then. A third edge, with an
    edge-service model directory, connects only after round 1 has been checkpointed: the cloud
    asks it its count, sends it the teacher (edge placement) with its first round, it trains
    in the rounds after, and it installs the delivered student at the end."""
    from client.edge_service.delivery import installed_tag

    rounds = 30
    overrides = ["fed.clients=3", f"fed.rounds={rounds}", "fed.min_available=2",
                 "fed.checkpoint_every=1", f"teacher.checkpoint={deployment.teacher}"]
    priv, pub = make_node_key(deployment.cloud.cfg.certs, "edge-late")
    deployment.cli.register(pub, "edge-late")
    models = deployment.root / "late-models"
    late_cfg = EdgeConfig(deployment.cloud.address, _edge_data(deployment.root, 2, 3),
                          ca=deployment.cloud.cfg.paths.ca_crt, key=priv, client_id=2,
                          port=free_port(), home=deployment.root / "edge-late",
                          app_key=deployment.edge_cfgs[0].app_key, node_poll=NODE_POLL,
                          task_poll=TASK_POLL, model_dir=models)
    runs = deployment.cloud.cfg.state_dir / "runs"
    box: dict = {}

    def run():
        try:
            box["res"] = submit(deployment.cli, config_overrides(None, overrides),
                                tmp_path / "runs", state_dir=deployment.cloud.cfg.state_dir,
                                timeout=600)
        except BaseException as exc:  # surfaced below
            box["err"] = exc

    started = time.time()
    th = threading.Thread(target=run)
    th.start()
    deadline = time.monotonic() + 300
    while (joined_after := _checkpoint_round(runs, started)[0]) < 1:
        assert th.is_alive() and time.monotonic() < deadline, box
        time.sleep(0.1)
    late = deployment.start(late_cfg, "edge-late")
    try:
        th.join(620)
        assert not th.is_alive() and "err" not in box, box.get("err")
        res = box["res"]
        assert res.status == "finished:completed", (res.run_dir / "server.log").read_text()
        cohorts = [json.loads(line) for line in
                   (res.run_dir / "cohorts.jsonl").read_text().splitlines()]
        assert [c["round"] for c in cohorts] == list(range(1, rounds + 1))
        assert all(2 not in c["cohort"] for c in cohorts[:joined_after])
        trained = [c["round"] for c in cohorts if 2 in c["replied"]]
        assert trained and trained[0] > joined_after, cohorts  # the late edge trained
        assert all(2 in c["replied"] for c in cohorts if c["round"] >= trained[0])
        assert installed_tag(models), "the late edge did not install the delivered student"
        log = (res.run_dir / "server.log").read_text()
        assert "new node(s) joined (clients 2)" in log
    finally:
        late.stop()
