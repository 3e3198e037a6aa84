"""The live run dashboard and /metrics with real processes: a cloud (SuperLink, proxy, dashboard)
on loopback, two edges with TLS and node auth, a signed run, and Debian's chromium reading the
page while the run goes on (selenium with /usr/bin/chromedriver).

The page's round counter advances and its MF1 curve gains points during the run; both edges
show connected, and one shows gone within two heartbeat intervals after it is killed; /metrics
parses with Prometheus' parser and matches the fetched run folder's rounds.csv; the public port
refuses the dashboard's paths and the dashboard listens on 127.0.0.1 only.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client.node.supernode import EdgeConfig, EdgeProcess, generate_key, start_edge
from server.deploy.cloud_config import CloudConfig
from server.deploy.submit import submit
from server.deploy.superlink import CloudProcesses, start_cloud
from shared.config import load_config
from deploy_kit import prepare_operator
from shared.platform.processes import free_port, group_members

HEARTBEAT = 10.0  # Flower's shortest (HEARTBEAT_MIN_INTERVAL): a dead edge shows within 2 x this
# 3 epochs of 3 steps (batch 160 of ~480 windows): 9 rounds, an evaluation every 3
RUN = ["fed.clients=2", "distill.epochs=3", "distill.batch_size=160"]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1300,1500"]


@dataclass
class Deployment:
    root: Path
    cloud: CloudProcesses
    teacher: Path
    op_key: Path
    edges: list[EdgeProcess] = field(default_factory=list)

    @property
    def dashboard(self) -> str:
        return f"http://{self.cloud.cfg.dashboard_address}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from client.node.local_data import write_device_folder

    root = tmp_path_factory.mktemp("watch")
    teacher, op_key = prepare_operator(root)
    state = root / "cloud"
    cloud, dep = None, None
    try:
        cloud = start_cloud(CloudConfig(state, host="127.0.0.1", port=free_port(),
                                        link_port=free_port(), dashboard_port=free_port()))
        dep = Deployment(root, cloud, teacher, op_key)
        cli = cloud.cli()
        for i in range(2):
            pub = generate_key(root / f"device-{i}" / "node.key")
            cli.register(pub, f"edge-{i}")
            folder = write_device_folder(root, i, 2, load_config(overrides=RUN))
            cfg = EdgeConfig(cloud.address, folder, ca=root / "trust" / "ca.crt",
                             key=root / f"device-{i}" / "node.key", client_id=i,
                             port=free_port(), home=root / f"device-{i}" / "home",
                             app_key=root / "op.key.pub", node_poll=0.3, task_poll=0.2,
                             heartbeat=HEARTBEAT)
            dep.edges.append(start_edge(cfg, root / f"edge-{i}.log"))
        deadline = time.monotonic() + 90
        while len(cli.online_nodes()) < 2:
            assert time.monotonic() < deadline, [e.log_tail() for e in dep.edges]
            time.sleep(0.3)
        yield dep
    finally:
        groups = set()
        for e in (dep.edges if dep else []):
            groups.add(e.pid)
            if e.alive():
                e.stop()
        if cloud is not None:
            groups |= cloud.groups
            cloud.stop()
        left = {g: group_members(g) for g in groups}
        assert not any(left.values()), f"processes left behind: {left}"


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a driver online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def page_state(driver) -> dict:
    """What the page shows now, read from its DOM."""
    return driver.execute_script("""
        const r = document.getElementById('round'), s = document.getElementById('state');
        return {round: +r.dataset.round, total: +r.dataset.total, phase: r.dataset.phase || '',
                state: s.textContent, run: document.getElementById('run-name').textContent,
                mf1_points: +document.getElementById('mf1-chart').dataset.points,
                edges: Array.from(document.querySelectorAll('#edges tbody tr')).map(
                    tr => [tr.children[0].textContent, tr.dataset.state])};""")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def test_dashboard_follows_a_deployed_run_and_a_killed_edge(deployment, browser, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    dep = deployment
    browser.get(f"{dep.dashboard}/runs/latest")
    result: dict = {}
    overrides = RUN + [f"teacher.checkpoint={dep.teacher}"]
    signed = dep.cloud.cli(sign_key=dep.op_key)
    worker = threading.Thread(target=lambda: result.setdefault(
        "run", submit(signed, overrides, tmp_path / "runs", dep.cloud.cfg.state_dir,
                      timeout=300)), daemon=True)
    started = time.monotonic()
    worker.start()
    seen: list[dict] = []
    while worker.is_alive():
        seen.append(page_state(browser))
        time.sleep(0.25)
    worker.join()
    run = result["run"]
    print(f"run: {time.monotonic() - started:.1f} s, {len(seen)} page reads")
    assert run.status == "finished:completed", (run.run_dir / "server.log").read_text()[-3000:]
    during = [s for s in seen if s["state"] == "running" and s["phase"] == "unikd"]
    rounds = sorted({s["round"] for s in during})
    assert len(rounds) >= 3 and rounds[-1] > rounds[0], seen[-5:]  # the counter advanced
    points = sorted({s["mf1_points"] for s in during})
    assert len([p for p in points if p > 0]) >= 2, points  # the curve grew, live
    assert any(sorted(s["edges"]) == [["edge-0", "connected"], ["edge-1", "connected"]]
               for s in during), seen[-1]
    rows = list(csv.DictReader(open(run.run_dir / "rounds.csv")))
    summary = json.loads((run.run_dir / "results.json").read_text())
    deadline = time.monotonic() + 30
    while (final := page_state(browser))["state"] != "completed":
        assert time.monotonic() < deadline, final
        time.sleep(0.25)
    (cloud_run,) = [p for p in Path(run.remote_dir).iterdir() if p.is_dir()]
    name = cloud_run.name  # the run folder on the cloud (`submit` fetched a copy)
    assert final["round"] == final["total"] == len(rows) and final["run"] == name

    # /metrics after the run: Prometheus' parser, the run folder's numbers
    status, body = get(f"{dep.dashboard}/metrics")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    label = (("run", name),)
    assert samples[("unikd_round", label)] == len(rows) == summary["rounds"]
    assert samples[("unikd_round_seconds_count", label)] == len(rows)
    assert samples[("unikd_round_seconds_sum", label)] == pytest.approx(
        sum(float(r["seconds"]) for r in rows), rel=1e-12)
    assert samples[("unikd_bytes_up_total", label)] == sum(int(r["bytes_up"]) for r in rows)
    assert samples[("unikd_bytes_down_total", label)] == sum(int(r["bytes_down"]) for r in rows)
    assert samples[("unikd_rejected_updates_total", label)] == summary["rejected_updates"]
    assert samples[("unikd_exchanges_total", label)] == summary["exchanges"]
    assert samples[("unikd_mf1", label)] == summary["mf1"]
    assert samples[("unikd_accuracy", label)] == summary["acc"]
    assert samples[("unikd_edges_connected", ())] == 2

    # kill one edge without its graceful exit: gone within two heartbeat intervals
    victim = dep.edges[1]
    os.killpg(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    while dict(page_state(browser)["edges"]).get("edge-1") != "gone":
        assert time.monotonic() - killed <= 2 * HEARTBEAT, page_state(browser)
        time.sleep(0.25)
    gone_after = time.monotonic() - killed
    assert dict(page_state(browser)["edges"])["edge-0"] == "connected"
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    print(f"edge-1 shown gone {gone_after:.1f} s after SIGKILL (heartbeat {HEARTBEAT:g} s)")
    status, body = get(f"{dep.dashboard}/metrics")
    parsed = {s.name: s.value for fam in text_string_to_metric_families(body.decode())
              for s in fam.samples if not s.labels}
    assert parsed["unikd_edges_connected"] == 1

    # `unikd watch` in a terminal: the same view, from the same state
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "shared.cli.main", "watch", "--state-dir",
                          str(dep.cloud.cfg.state_dir), "--once"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert f"{name}  [completed]" in out.stdout, out.stdout
    assert f"{len(rows)} / {len(rows)}" in out.stdout and f"{summary['mf1']:.2f}" in out.stdout
    lines = out.stdout.splitlines()
    assert any("edge-0" in x and "connected" in x for x in lines), out.stdout
    assert any("edge-1" in x and "gone" in x for x in lines), out.stdout

    # the run's files are listed and served; nothing outside the run folder is
    status, body = get(f"{dep.dashboard}/runs/{name}/files/")
    assert status == 200 and "rounds.csv" in {f["path"] for f in json.loads(body)}
    status, body = get(f"{dep.dashboard}/runs/{name}/files/rounds.csv")
    assert status == 200 and body == (run.run_dir / "rounds.csv").read_bytes()
    assert get(f"{dep.dashboard}/runs/{name}/files/..%2F..%2Fcloud.json")[0] == 404


def _public(address: str, path: str, ca: Path) -> int:
    req = urllib.request.Request(f"https://{address}{path}", method="GET")
    try:
        with urllib.request.urlopen(req, timeout=10,
                                    context=ssl.create_default_context(cafile=str(ca))) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_public_port_refuses_the_dashboard_and_metrics(deployment):
    ca, public = deployment.root / "trust" / "ca.crt", deployment.cloud.address
    paths = ("/", "/metrics", "/runs/latest", "/api/runs/latest", "/static/dashboard.js",
             "/runs/latest/files/")
    assert {p: _public(public, p, ca) for p in paths} == {p: 404 for p in paths}
    for path in ("/", "/metrics", "/runs/latest", "/api/runs/latest", "/static/dashboard.js"):
        assert get(f"{deployment.dashboard}{path}")[0] == 200, path  # answered on loopback


def test_dashboard_listens_on_loopback_only(deployment):
    port = deployment.cloud.cfg.dashboard_port
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.append(addr)
    assert listening == ["0100007F"], listening  # 127.0.0.1 and nothing else
