"""`unikd edge --check` and `unikd edge`'s join checks, with real processes on loopback only.

Each way an edge can fail to join gives its one-line cause: a name that does not resolve, a
closed port, a certificate for another name, one from another CA, a listener that does not
speak TLS, a node key the cloud does not know and an app key file that is not the operator's
public key. One real cloud (proxy + SuperLink, TLS and node authentication, certificates from
`unikd certs init`) serves the whole module; the TLS and plain listeners are threads of this
process on 127.0.0.1. Without --check, `unikd edge` says why each attempt failed and when it
tries again.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.node.join_check import JoinTarget, check_app_key
from client.node.supernode import generate_key
from server.deploy.certs import make_ca, make_server_cert
from server.deploy.cloud_config import CloudConfig
from server.deploy.flwr_cli import FlwrCli
from server.deploy.superlink import CloudProcesses, start_cloud
from shared.cli.main import main
from shared.platform.app_signing import generate_key as generate_app_key
from shared.platform.processes import free_port, group_members

REPO = Path(__file__).resolve().parents[1]
QUICK = 20.0  # seconds a failing --check may take here, interpreter start included (2 cores)


@dataclass
class Cloud:
    root: Path
    procs: CloudProcesses
    cli: FlwrCli
    ca: Path  # the cloud's CA certificate, as its edges hold it
    key: Path  # a node key registered with the cloud
    app_pub: Path  # the operator's app public key

    def args(self, **override) -> list[str]:
        """`unikd edge --check` arguments of a healthy edge, some replaced (None: left out)."""
        flags = {"--superlink": self.procs.address, "--ca": self.ca, "--key": self.key,
                 "--app-key": self.app_pub, **override}
        return [x for flag, value in flags.items() if value is not None
                for x in (flag, str(value))]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge-check")
    state = root / "cloud"
    assert main(["certs", "init", "--dir", str(root / "pki"), "--name", "localhost",
                 "--cloud-dir", str(state / "certs"), "--edge-dir", str(root / "trust")]) == 0
    app_pub = generate_app_key(root / "op.key")
    procs = None
    try:
        procs = start_cloud(CloudConfig(state, host="127.0.0.1", port=free_port(),
                                        link_port=free_port(), dashboard_port=0))
        cli = procs.cli()
        key = root / "device" / "node.key"
        cli.register(generate_key(key), "edge-0")
        yield Cloud(root, procs, cli, root / "trust" / "ca.crt", key, app_pub)
    finally:
        if procs is not None:
            groups = procs.groups
            procs.stop()
            left = {g: group_members(g) for g in groups}
            assert not any(left.values()), f"processes left behind: {left}"


def edge(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """`unikd edge ARGS` in a fresh process; (its result, its wall time)."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "shared.cli.main", "edge", *args,
                           "--metrics-port", "0"], cwd=REPO,  # parallel tests: no fixed port
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.monotonic() - started


def cause(*args: str) -> str:
    """`unikd edge --check ARGS` fails at once, with exactly one line: its cause."""
    proc, took = edge(*args, "--check")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert took < QUICK, took
    return proc.stderr.strip()


class Listener:
    """A TCP listener on 127.0.0.1 in a thread of this process: each accepted connection goes
    to `serve(conn)`; with `serve` None it never accepts (connections wait in the backlog)."""

    def __init__(self, serve=None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(serve,), daemon=True)
        self.thread.start()

    def _loop(self, serve) -> None:
        while serve is not None and not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    serve(conn)
                except OSError:  # the checking side hung up (as it does on a bad certificate)
                    pass

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def tls_server(cert_dir: Path):
    """A `serve` that completes a TLS handshake with `cert_dir`'s server.pem and server.key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_dir / "server.pem", cert_dir / "server.key")

    def serve(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True):
            pass

    return serve


def plain_http(conn: socket.socket) -> None:
    """What a plain HTTP server does with a TLS ClientHello: a 400 answer, then close."""
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


# ---------------------------------------------------------------- each cause, one line


def test_a_name_that_does_not_resolve(cloud):
    assert cause(*cloud.args(**{"--superlink": "cloud.invalid:8000"})) == (
        "unikd: cannot join cloud.invalid:8000: the name cloud.invalid does not resolve "
        "(.invalid names never do, RFC 6761): check --superlink")


def test_a_closed_port(cloud):
    port = free_port()  # nothing listens there
    assert cause(*cloud.args(**{"--superlink": f"127.0.0.1:{port}"})) == (
        f"unikd: cannot join 127.0.0.1:{port}: port {port} is closed on 127.0.0.1 (connection "
        f"refused): is the cloud up, and is {port} its public port?")


def test_a_certificate_for_another_name(cloud, tmp_path):
    make_ca(tmp_path, common_name="test-ca")
    make_server_cert(tmp_path, ["cloud.example"])  # the right CA, the wrong name
    with Listener(tls_server(tmp_path)) as srv:
        line = cause(*cloud.args(**{"--superlink": f"127.0.0.1:{srv.port}",
                                    "--ca": tmp_path / "ca.crt"}))
    assert line == (f"unikd: cannot join 127.0.0.1:{srv.port}: TLS: the cloud's certificate "
                    f"is for cloud.example, not 127.0.0.1: dial a name it carries, or have "
                    f"the operator reissue it with --name 127.0.0.1")


def test_a_certificate_from_another_ca(cloud, tmp_path):
    other = make_ca(tmp_path / "other", common_name="other-ca")  # the real cloud, another CA
    assert cause(*cloud.args(**{"--ca": other.ca_crt})) == (
        f"unikd: cannot join {cloud.procs.address}: TLS: the cloud's certificate (issued by "
        f"CN=unikd-ca) does not chain to --ca {other.ca_crt}: wrong CA file, or not your cloud")


def test_a_listener_that_does_not_speak_tls(cloud):
    with Listener(plain_http) as srv:
        line = cause(*cloud.args(**{"--superlink": f"127.0.0.1:{srv.port}"}))
    assert line == (f"unikd: cannot join 127.0.0.1:{srv.port}: TLS: 127.0.0.1:{srv.port} does "
                    f"not speak TLS (WRONG_VERSION_NUMBER): a plain HTTP or TCP service, or a "
                    f"cloud started with --insecure")
    with Listener() as silent:  # accepts TCP (the kernel does) but never answers
        line = cause(*cloud.args(**{"--superlink": f"127.0.0.1:{silent.port}"}),
                     "--join-timeout", "1")
    assert line == (f"unikd: cannot join 127.0.0.1:{silent.port}: TLS: 127.0.0.1:{silent.port} "
                    f"accepted the connection but gave no TLS answer within 1 s: not a TLS "
                    f"server?")


def test_a_node_key_the_cloud_does_not_know(cloud, tmp_path):
    before = cloud.cli.nodes()
    rogue = tmp_path / "rogue.key"
    generate_key(rogue)  # a valid key, never registered
    assert cause(*cloud.args(**{"--key": rogue})) == (
        f"unikd: cannot join {cloud.procs.address}: the cloud refused node key {rogue} (Failed "
        f"to activate SuperNode.): its public key is not registered there (the operator runs "
        f"`unikd certs register rogue.key.pub`), or a node with this key is online already")
    assert cloud.cli.nodes() == before


def test_an_app_key_file_that_is_not_the_operators_public_key(cloud, tmp_path):
    junk = tmp_path / "operator.pub"
    junk.write_text("not a key\n")
    assert cause(*cloud.args(**{"--app-key": junk})) == (
        f"unikd: cannot join {cloud.procs.address}: --app-key {junk}: not a PEM public key")
    # the other wrong files, checked in this process (the check is the same function)
    op_key = cloud.root / "op.key"
    for path, why in ((op_key, "a private key; give the operator's public key (KEY.pub), and "
                               "delete this copy"),
                      (cloud.key.with_name("node.key.pub"),
                       "an OpenSSH public key (a node key?), not the operator's app key"),
                      (tmp_path / "none.pub", "not found")):
        res = check_app_key(JoinTarget("localhost", 1, app_key=path))
        assert not res.ok and res.local and res.line.startswith(f"--app-key {path}: {why}")
        assert "\n" not in res.line and "PRIVATE" not in res.line  # no key material printed


def test_check_passes_against_the_healthy_cloud_and_leaves_the_node_offline(cloud):
    proc, _ = edge(*cloud.args(), "--check")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"unikd: {cloud.procs.address} can be joined: address 127.0.0.1; port "
                           f"{cloud.procs.cfg.port} open; TLS certificate for 127.0.0.1 chains "
                           f"to ca.crt"), line
    assert re.search(r"node key node\.key registered \(node \d+\); app key op\.key\.pub is an "
                     r"Ed25519 public key", line), line
    (node,) = cloud.cli.nodes()
    assert node["status"] != "online"  # activated and deactivated: a SuperNode may start


# ---------------------------------------------------------------- never retries silently


def test_edge_says_why_each_attempt_failed_and_when_it_tries_again(cloud, make_domain_file):
    data = make_domain_file(domain="1").parent
    port = free_port()
    proc, took = edge(*cloud.args(**{"--superlink": f"127.0.0.1:{port}"}), "--data", str(data),
                      "--max-retries", "2")
    assert proc.returncode == 1, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("unikd:")]
    refused = (f"unikd: cannot join 127.0.0.1:{port}: port {port} is closed on 127.0.0.1 "
               f"(connection refused): is the cloud up, and is {port} its public port?")
    assert len(lines) == 3, proc.stderr
    for attempt, wait, line in zip((1, 2), (1, 2), lines):
        assert re.fullmatch(re.escape(f"{refused} (attempt {attempt}; next try in {wait} s, "
                                      f"at ") + r"\d\d:\d\d:\d\d\)", line), line
    assert lines[2] == f"{refused}; giving up after 3 attempts (--max-retries 2)"
    assert 3 <= took < 3 + QUICK  # waited 1 s, then 2 s


def test_a_started_node_that_loses_its_cloud_says_why_it_retries(cloud, make_domain_file,
                                                                  tmp_path):
    """Past the checks, Flower's SuperNode retries a failed call with "Connection attempt
    failed, retrying in N seconds" and keeps the cause at DEBUG: our launcher prints it."""
    from client.node.supernode import EdgeConfig, start_edge

    port = free_port()  # the cloud is gone
    cfg = EdgeConfig(f"127.0.0.1:{port}", make_domain_file(domain="1").parent, ca=cloud.ca,
                     key=cloud.key, app_key=cloud.app_pub, port=free_port(),
                     home=tmp_path / "home", max_retries=1)
    node = start_edge(cfg, tmp_path / "node.log")
    try:
        assert node.wait(60) != 0, node.log_tail()
    finally:
        node.stop()
    lines = node.output().splitlines()
    why = next(i for i, x in enumerate(lines) if "unikd: a call to the cloud failed: " in x)
    assert lines[why].endswith("unikd: a call to the cloud failed: ConnectError: [Errno 111] "
                               "Connection refused"), lines[why]
    assert "Connection attempt failed, retrying in" in lines[why + 1], lines[why:]


def test_edge_joins_once_its_checks_pass(cloud, make_domain_file, tmp_path):
    """The check activates and deactivates the node; the SuperNode started next gets in."""
    from shared.platform.processes import start_group

    data = make_domain_file(domain="1").parent
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    log = tmp_path / "edge.log"
    node = start_group("edge", [sys.executable, "-m", "shared.cli.main", "edge", *cloud.args(),
                                "--data", str(data), "--home", str(tmp_path / "home"),
                                "--port", str(free_port()), "--node-poll", "0.3",
                                "--metrics-port", "0"],
                       log, env, REPO)
    try:
        # The check itself activates the node, so the cloud can see it online before the
        # summary line is printed: wait for the line first, then for the SuperNode.
        joined = f"unikd: {cloud.procs.address} can be joined: address 127.0.0.1"
        deadline = time.monotonic() + 90
        while joined not in log.read_text() or not cloud.cli.online_nodes():
            assert node.alive() and time.monotonic() < deadline, node.log_tail()
            time.sleep(0.3)
        text = log.read_text()
        assert "cannot join" not in text, text
    finally:
        node.stop()
    assert node.leftovers() == {}
