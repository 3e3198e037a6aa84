"""The device loop with real processes: two devices each run `unikd serve` (window store + model
directory) and `unikd edge --store --model-dir` against a cloud with TLS and node
authentication. A sensor client streams windows into each service over gRPC; the federated run
trains on exactly those windows; when the run ends both services answer Predict with the delivered student as version 2,
and `unikd edge-rollback` puts version 1 back. Every process runs in its own session and is
stopped (with its children) in the finally-block, which also checks nothing is left behind.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from client.edge_service import versions
from client.edge_service.delivery import install_delivered
from client.edge_service.models import load_predictor
from client.edge_service.windows import WindowShape, encode_window
from client.node.local_data import simulated_split
from protos import edge_pb2, edge_pb2_grpc
from server.deploy.certs import make_node_key
from server.deploy.cloud_config import CloudConfig
from server.deploy.run_overrides import config_overrides
from server.deploy.submit import submit
from server.deploy.superlink import start_cloud
from shared.platform.app_signing import generate_key as generate_app_key
from shared.config import load_config
from shared.data.loaders import Normalizer
from shared.data.datasets import get_spec
from shared.unikd.engine import UniKDNets
from shared.platform.processes import free_port, group_members, start_group
from shared.protocol.records import student_state

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC = get_spec("SYNTH")
ROUNDS = 4
# The edges ask the cloud for work every 0.3 s (default 0.1): each ask costs the SuperLink a
# TLS request, and an idle deployment at 0.1 s keeps half of a 2-core box busy.
NODE_POLL = 0.3
UNIKD = [sys.executable, "-m", "shared.cli.main"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FLWR_TELEMETRY_ENABLED": "0"}


def start_service(root: Path, i: int) -> tuple[subprocess.Popen, str]:
    """`unikd serve` on a free loopback port; returns the process and its bound address."""
    proc = subprocess.Popen(
        [*UNIKD, "serve", "--store", str(root / f"store-{i}.db"), "--model-dir",
         str(root / f"models-{i}"), "--address", "127.0.0.1:0", "--watch", "0.2",
         "--metrics-port", str(free_port())],
        cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=open(root / f"serve-{i}.log",
                                                                        "ab"),
        text=True, start_new_session=True)
    line = proc.stdout.readline()  # "unikd serve: listening on 127.0.0.1:PORT (...)"
    match = re.search(r"listening on (\S+)", line)
    assert match, line + (root / f"serve-{i}.log").read_text()
    return proc, match.group(1)


def stream(address: str, windows: np.ndarray) -> int:
    """A sensor app: every window into the service, in calls of 16."""
    with grpc.insecure_channel(address) as channel:
        stub = edge_pb2_grpc.EdgeDeviceStub(channel)
        total = 0
        for k in range(0, len(windows), 16):
            reply = stub.Ingest(iter(edge_pb2.IngestRequest(source="imu", window=encode_window(x),
                                                            captured_at=time.time())
                                     for x in windows[k:k + 16]), timeout=30)
            total += reply.accepted
        return total


def status(address: str) -> edge_pb2.StatusReply:
    with grpc.insecure_channel(address) as channel:
        return edge_pb2_grpc.EdgeDeviceStub(channel).Status(edge_pb2.StatusRequest(), timeout=10)


def predict(address: str, x: np.ndarray) -> edge_pb2.PredictReply:
    with grpc.insecure_channel(address) as channel:
        return edge_pb2_grpc.EdgeDeviceStub(channel).Predict(
            edge_pb2.PredictRequest(window=encode_window(x), request_id="e2e"), timeout=10)


def wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


def test_device_loop_end_to_end(tmp_path):
    from server.central.teacher import save_teacher, train_teacher
    from shared.data.scenario import load_scenario

    root = tmp_path
    tcfg = load_config(overrides=["teacher.epochs=1"])
    data = load_scenario(tcfg.data)
    teacher = root / "teacher.pt"
    save_teacher(teacher, train_teacher(tcfg, data, False, []), tcfg, data)
    shape = WindowShape(SPEC.channels, SPEC.length)

    cloud, services, edges = None, [], []
    try:
        # ---- the cloud (TLS + node authentication) and two devices' services
        cloud = start_cloud(CloudConfig(root / "cloud", host="127.0.0.1", port=free_port(),
                                        link_port=free_port(), dashboard_port=0,
                                        names=["localhost", "127.0.0.1"],
                                        dev_certs=True))
        app_pub = generate_app_key(root / "app.key")  # the edges run only bundles it signed
        cli = cloud.cli(sign_key=root / "app.key")
        streamed, addresses = [], []
        rc = load_config(overrides=["fed.clients=2"])
        for i in range(2):
            versions.write_service_shape(root / f"models-{i}", shape)
            torch.manual_seed(100 + i)  # a student already on the device: version 1
            install_delivered(root / f"models-{i}", student_state(UniKDNets.for_spec(SPEC)),
                              Normalizer.identity(SPEC.channels), SPEC, -1, f"factory-{i}")
            proc, address = start_service(root, i)
            services.append(proc)
            addresses.append(address)
            assert status(address).model.installed_version == 1
            train, _ = simulated_split(rc.data.dataset, rc.data.path, rc.data.synth_shift,
                                       rc.data.scenario.split("->")[1], rc.fed.partition, 2, i,
                                       rc.seed)
            windows = train.x[: 40 + 9 * i].numpy()  # raw sensor windows, 40 and 49
            streamed.append(stream(address, windows))
            assert status(address).windows == streamed[i] == len(windows)

        # ---- the two edges: `unikd edge --store --model-dir`, authenticated
        edge_cmds = []
        for i in range(2):
            priv, pub = make_node_key(cloud.cfg.certs, f"dev-{i}")
            cli.register(pub, f"dev-{i}")
            edge_cmds.append([*UNIKD, "edge", "--superlink", cloud.address, "--store",
                              str(root / f"store-{i}.db"), "--model-dir",
                              str(root / f"models-{i}"), "--ca", str(cloud.cfg.paths.ca_crt),
                              "--key", str(priv), "--app-key", str(app_pub),
                              "--client-id", str(i), "--node-poll", str(NODE_POLL), "--port",
                              str(free_port()), "--home", str(root / f"edge-home-{i}"),
                              "--metrics-port", "0"])  # one fixed default per host
            edges.append(start_group(f"edge-{i}", edge_cmds[i], root / f"edge-{i}.log", _env(),
                                     REPO_ROOT))
        wait_for("2 edges online", lambda: len(cli.online_nodes()) >= 2, 90)

        # ---- the run (edge teacher placement)
        overrides = ["fed.clients=2", f"fed.rounds={ROUNDS}", "fed.checkpoint_every=1",
                     "fed.teacher_placement=edge", "fed.round_timeout=60",
                     f"teacher.checkpoint={teacher}"]
        box: dict = {}

        def run():
            try:
                box["res"] = submit(cli, config_overrides(None, overrides), root / "runs",
                                    state_dir=cloud.cfg.state_dir, app=REPO_ROOT, timeout=500)
            except BaseException as exc:  # surfaced below
                box["err"] = exc

        th = threading.Thread(target=run)
        th.start()
        th.join(520)
        assert not th.is_alive() and "err" not in box, box.get("err")
        res = box["res"]
        log = (res.run_dir / "server.log").read_text()
        assert res.status == "finished:completed", log[-3000:]

        # trained on exactly the streamed windows
        assert f"windows per client: 0={streamed[0]} 1={streamed[1]}" in log, log[-3000:]
        rows = list(csv.DictReader((res.run_dir / "rounds.csv").open()))
        assert len(rows) == ROUNDS and all(int(r["clients"]) == 2 for r in rows), rows
        # the teacher snapshot went once to each node (a restarted node gets it again:
        # tests/test_device_loop.py and test_deploy.py's restart test)
        ledger = list(csv.DictReader((res.run_dir / "ledger.csv").open()))
        teacher_rounds: dict[str, set] = {}
        for r in ledger:
            if r["record"] == "teacher":
                teacher_rounds.setdefault(r["node"], set()).add(int(r["round"]))
        assert sorted(len(v) for v in teacher_rounds.values()) == [1, 1], teacher_rounds

        # ---- both services now answer with the delivered student, version 2
        x = np.asarray(simulated_split(rc.data.dataset, rc.data.path, rc.data.synth_shift,
                                       rc.data.scenario.split("->")[1], rc.fed.partition, 2, 0,
                                       rc.seed)[1].x[0])
        for i, address in enumerate(addresses):
            st = wait_for(f"service {i} on version 2",
                          lambda: (s := status(address)).model.installed_version == 2 and s, 30)
            assert st.model.round == ROUNDS and st.last_round == ROUNDS
            reply = predict(address, x)
            assert reply.model_generation == st.model.generation == 2
            want = load_predictor(root / f"models-{i}" / "v0002.pt").logits(x[None])[0]
            np.testing.assert_allclose(reply.logits, want, rtol=0, atol=1e-6)
        assert "delivered: client 0 -> v2, client 1 -> v2" in log

        # ---- rollback restores version 1 (kept on disk), at once with --address
        out = subprocess.run([*UNIKD, "edge-rollback", "--model-dir", str(root / "models-0"),
                              "--address", addresses[0]], cwd=REPO_ROOT, env=_env(),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        st = status(addresses[0])
        assert st.model.installed_version == 1 and st.model.generation == 3
        want = load_predictor(root / "models-0" / "v0001.pt").logits(x[None])[0]
        np.testing.assert_allclose(predict(addresses[0], x).logits, want, rtol=0, atol=1e-6)
        assert status(addresses[1]).model.installed_version == 2  # the other device is as was
    finally:
        groups: set[int] = set()
        for e in edges:
            groups |= e.refresh()
            e.stop()
        for proc in services:
            os.killpg(proc.pid, signal.SIGTERM)  # graceful stop, as systemd sends it
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            groups.add(proc.pid)
        if cloud is not None:
            cloud.stop()
            groups |= cloud.superlink.groups
        left = {g: group_members(g) for g in groups}
        assert not any(left.values()), f"processes left behind: {left}"
