"""The edge node's /metrics (`unikd edge --metrics-port`, client/node/node_metrics.py), with real
processes: `unikd edge` itself (join checks, SuperNode, warm executor, forked tasks).

An edge that cannot join shows it: state failing, cause "port", on 127.0.0.1 only. In a real
deployed run (cloud with TLS and node auth, two `unikd edge` processes, a record-DP run, one
edge with its own budget) each node's counts match what the run did: rounds per phase equal the
run folder's rounds.csv and evals.csv rows, its ε the cloud's privacy ledger for that client and
its own ledger file, its bytes the cloud's rounds.csv totals up to packing's headers.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from client.node.node_config import DEFAULT_DELTA
from deploy_kit import prepare_operator
from shared.platform.processes import free_port, group_members, process_table
from shared.privacy.accounting import epsilon_from_rdp

RUN = ["fed.clients=2", "fed.rounds=2", "fed.dp=record", "fed.dp_epsilon=8"]
BUDGET = 100.0  # edge-0's own --max-epsilon: far above what the run spends


def edge_cli(*args: str, log: Path) -> subprocess.Popen:
    """`unikd edge ARGS` in its own session, output to `log`."""
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "shared.cli.main", "edge", *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        out.close()


def scrape(port: int) -> dict:
    """(name, labels) -> value, through Prometheus' own text parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def wait_scrape(port: int, until, timeout: float = 60.0, what: str = "") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            m = scrape(port)
            if until(m):
                return m
        except OSError:
            m = None
        assert time.monotonic() < deadline, (what, m)
        time.sleep(0.3)


def listeners(port: int) -> list[str]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(addr)
    return found


def groups_under(pid: int) -> set[int]:
    """Process groups of `pid` and its descendants (the launcher runs in a session of its own)."""
    table = process_table()
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        seen.add(p)
        todo += [c for c, (ppid, _) in table.items() if ppid == p and c not in seen]
    return {table[p][1] for p in seen if p in table}


def stop(proc: subprocess.Popen) -> set[int]:
    """SIGTERM (what systemd sends) to `unikd edge`; it stops its node. Groups it had."""
    groups = groups_under(proc.pid)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            for g in groups:
                try:
                    os.killpg(g, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(10)
    return groups


def test_edge_that_cannot_join_shows_why_on_loopback_only(tmp_path, make_domain_file):
    make_domain_file()
    port, closed = free_port(), free_port()  # nothing listens on `closed`
    proc = edge_cli("--superlink", f"127.0.0.1:{closed}", "--data", str(tmp_path / "data"),
                    "--insecure", "--allow-unsigned-apps", "--home", str(tmp_path / "home"),
                    "--port", str(free_port()), "--metrics-port", str(port),
                    log=tmp_path / "edge.log")
    try:
        m = wait_scrape(port, lambda m: m.get(("unikd_node_join_failures_total", ())),
                        what="a failed join attempt")
        assert m[("unikd_node_join_state", ())] == 2  # failing
        assert m[("unikd_node_join_failure_cause", ())] == 2  # port
        assert m[("unikd_node_join_attempts_total", ())] >= 1
        assert m[("unikd_node_last_join_failure_timestamp_seconds", ())] <= time.time()
        assert m[("unikd_node_supernode_up", ())] == 0
        assert not any(name.startswith("unikd_node_rounds") for name, _ in m)  # no node yet
        assert listeners(port) == ["0100007F"]  # 127.0.0.1 and nothing else
    finally:
        stop(proc)
    assert proc.returncode == 0, (tmp_path / "edge.log").read_text()


def test_metrics_port_flag_is_checked_and_zero_turns_it_off(tmp_path, make_domain_file):
    make_domain_file()
    common = ["--superlink", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "data"),
              "--insecure", "--allow-unsigned-apps", "--home", str(tmp_path / "home")]
    bad = subprocess.run([sys.executable, "-m", "shared.cli.main", "edge", *common,
                          "--metrics-port", "70000"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--metrics-port" in bad.stderr, bad.stderr
    taken = free_port()
    import socket

    with socket.socket() as holder:  # a port already taken: an error naming the flag
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        busy = subprocess.run([sys.executable, "-m", "shared.cli.main", "edge", *common,
                               "--max-retries", "0", "--metrics-port", str(taken)],
                              capture_output=True, text=True, timeout=60)
    assert busy.returncode != 0 and f"--metrics-port {taken}" in busy.stderr, busy.stderr
    off = subprocess.run([sys.executable, "-m", "shared.cli.main", "edge", *common,
                          "--max-retries", "0", "--metrics-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert off.returncode == 1 and "cannot join" in off.stderr, off.stderr
    assert "node metrics on" not in off.stderr


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A cloud, two `unikd edge` processes with /metrics, and one finished record-DP run."""
    from client.node.local_data import write_device_folder
    from client.node.supernode import generate_key
    from server.deploy.cloud_config import CloudConfig
    from server.deploy.submit import submit
    from server.deploy.superlink import start_cloud
    from shared.config import load_config

    root = tmp_path_factory.mktemp("nodemetrics")
    teacher, op_key = prepare_operator(root)
    cloud, edges, groups = None, [], set()
    try:
        cloud = start_cloud(CloudConfig(root / "cloud", host="127.0.0.1", port=free_port(),
                                        link_port=free_port(), dashboard_port=0))
        groups |= cloud.groups
        cli = cloud.cli()
        ports = []
        for i in range(2):
            pub = generate_key(root / f"device-{i}" / "node.key")
            cli.register(pub, f"edge-{i}")
            folder = write_device_folder(root, i, 2, load_config(overrides=RUN))
            ports.append(free_port())
            edges.append(edge_cli(
                "--superlink", cloud.address, "--data", str(folder),
                "--ca", str(root / "trust" / "ca.crt"),
                "--key", str(root / f"device-{i}" / "node.key"),
                "--app-key", str(root / "op.key.pub"), "--client-id", str(i),
                "--port", str(free_port()), "--home", str(root / f"device-{i}" / "home"),
                "--node-poll", "0.3", "--metrics-port", str(ports[i]),
                *(["--max-epsilon", str(BUDGET)] if i == 0 else []),
                log=root / f"edge-{i}.log"))
        deadline = time.monotonic() + 120
        while len(cli.online_nodes()) < 2:
            assert time.monotonic() < deadline, [(root / f"edge-{i}.log").read_text()[-2000:]
                                                 for i in range(2)]
            time.sleep(0.3)
        started = time.time()
        run = submit(cloud.cli(sign_key=op_key),
                     RUN + [f"teacher.checkpoint={root / 'teacher.pt'}"], root / "runs",
                     cloud.cfg.state_dir, timeout=400)
        assert run.status == "finished:completed", (run.run_dir / "server.log").read_text()[-3000:]
        yield {"root": root, "run": run, "ports": ports, "started": started,
               "ended": time.time(), "edges": edges}
    finally:
        for e in edges:
            groups |= stop(e)
        if cloud is not None:
            cloud.stop()
        left = {g: group_members(g) for g in groups}
        assert not any(left.values()), f"processes left behind: {left}"


def test_node_metrics_match_the_deployed_run(deployed):
    run, ports = deployed["run"], deployed["ports"]
    rounds = list(csv.DictReader(open(run.run_dir / "rounds.csv")))
    evals = list(csv.DictReader(open(run.run_dir / "evals.csv")))
    assert len(rounds) == 2 and evals

    def done(m: dict) -> bool:  # the executor has read the report of the run's last task
        return m.get(("unikd_node_rounds_total", (("phase", "evaluate"),))) == len(evals)

    nodes = [wait_scrape(p, done, what=f"edge-{i}'s evaluations") for i, p in enumerate(ports)]
    privacy = json.loads((run.run_dir / "privacy.json").read_text())
    released = privacy["released_counts"]
    for i, m in enumerate(nodes):
        def phase(name: str, value: str) -> float:
            return m[(name, (("phase", value),))]

        assert m[("unikd_node_join_state", ())] == 1 and m[("unikd_node_supernode_up", ())] == 1
        assert m[("unikd_node_join_failures_total", ())] == 0
        assert m[("unikd_node_join_failure_cause", ())] == 0
        # rounds participated: the run folder's rows (both edges answer every round)
        assert phase("unikd_node_rounds_total", "unikd") == len(rounds), i
        assert phase("unikd_node_rounds_total", "evaluate") == len(evals), i
        assert phase("unikd_node_rounds_total", "query") == 1
        assert phase("unikd_node_rounds_total", "teacher") == 0  # a teacher checkpoint: none
        assert all(v == 0 for (name, _), v in m.items() if name == "unikd_node_failed_tasks_total")
        assert m[("unikd_node_last_round", ())] == max(int(r["round"]) for r in rounds)
        last = m[("unikd_node_last_message_timestamp_seconds", ())]
        assert deployed["started"] <= last <= deployed["ended"]
        assert phase("unikd_node_round_seconds_count", "unikd") == len(rounds)
        assert phase("unikd_node_round_seconds_sum", "unikd") > 0
        assert m[("unikd_node_round_seconds_bucket", (("le", "+Inf"), ("phase", "unikd")))] \
            == len(rounds)
        # the released count: exactly what the cloud planned with, and the held count plus
        # the count noise (std 20 by default; 8 std is a 1e-15 tail, so this cannot flake)
        held = len(torch.load(deployed["root"] / f"data-{i}" / "train_1.pt")["labels"])
        assert m[("unikd_node_windows", ())] == released[str(i)], i
        assert abs(released[str(i)] - held) <= 8 * privacy["count_noise_std"], i
        # no model directory: the cloud delivers nothing, no version is reported
        assert phase("unikd_node_rounds_total", "deliver") == 0
        assert ("unikd_node_delivered_version", ()) not in m
        assert ("unikd_node_model_version", ()) not in m
    # bytes: the two edges' UNI-KD traffic is the cloud's rounds.csv, up to packing's headers
    for key, column in (("unikd_node_bytes_up_total", "bytes_up"),
                        ("unikd_node_bytes_down_total", "bytes_down")):
        node_sum = sum(m[(key, (("phase", "unikd"),))] for m in nodes)
        assert node_sum == pytest.approx(sum(int(r[column]) for r in rounds), rel=0.01), key
    # epsilon: edge-0 keeps a ledger; its figure is its ledger file's and the cloud's
    ledger = json.loads((deployed["root"] / "device-0" / "home" / "dp-ledger.json").read_text())
    spent = nodes[0][("unikd_node_dp_epsilon_spent", ())]
    assert spent == pytest.approx(epsilon_from_rdp(tuple(ledger["rdp"]), DEFAULT_DELTA))
    cloud = [float(r["epsilon"]) for r in csv.DictReader(open(run.run_dir / "privacy_ledger.csv"))
             if r["client"] == "0"]
    assert spent == pytest.approx(cloud[-1], rel=1e-6) and 0 < spent < BUDGET
    assert nodes[0][("unikd_node_dp_epsilon_budget", ())] == BUDGET
    assert nodes[0][("unikd_node_dp_charges", ())] == len(ledger["entries"]) >= len(rounds)
    assert ("unikd_node_dp_epsilon_spent", ()) not in nodes[1]  # no budget, no ledger
    for p in ports:
        assert listeners(p) == ["0100007F"]
