"""The cloud's public port: Caddy forwards the Fleet API and /health only, the SuperLink binds
loopback; the CA stays offline; the state dir is owner-only; a cloud that cannot start its
proxy says so and leaves nothing running and nothing lost."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from server.deploy.certs import cloud_files, init_all
from server.deploy.proxy import FLEET_PREFIX, HEALTH_PATH, ProxyConfig, caddy_config
from server.deploy.cloud_certs import ensure_certs
from server.deploy.cloud_config import CloudConfig
from server.deploy.superlink import (CLOUD_TASK_POLL, cloud_env, proxy_config, start_cloud,
                                     superlink_command)
from server.fed.run_folder import resume_dir
from shared.cli.main import main
from shared.errors import UnikdError
from shared.platform.processes import free_port


def test_the_fleet_prefix_is_flowers_own():
    from flwr.superlink.routers.fleet.router import router as fleet
    from flwr.supercore.routers.health.router import router as health

    assert fleet.prefix + "/" == FLEET_PREFIX
    assert HEALTH_PATH in {r.path for r in health.routes}


def test_proxy_forwards_fleet_and_health_only_and_reencrypts(tmp_path):
    cfg = CloudConfig(tmp_path, host="0.0.0.0", port=8000, link_port=9093)
    conf = caddy_config(proxy_config(cfg))
    assert conf["admin"]["disabled"] is True
    server = conf["apps"]["http"]["servers"]["public"]
    assert server["listen"] == ["0.0.0.0:8000"]
    allowed, refuse = server["routes"][:-1], server["routes"][-1]
    assert [r["match"][0] for r in allowed] == [
        {"path": ["/v1/fleet/*"], "method": ["POST"]},
        {"path": ["/health"], "method": ["GET", "HEAD"]}]
    assert refuse == {"handle": [{"handler": "static_response", "status_code": 404,
                                  "body": "not served here\n"}]}
    for r in allowed:
        (fwd,) = r["handle"]
        assert fwd["upstreams"] == [{"dial": "127.0.0.1:9093"}]
        tls = fwd["transport"]["tls"]  # TLS again on the loopback hop, checked against our CA
        assert tls["ca"]["pem_files"] == [str(cfg.paths.ca_crt)]
        assert tls["server_name"] == "127.0.0.1"
    assert conf["apps"]["tls"]["certificates"]["load_files"][0]["key"] == \
        str(cfg.paths.server_key)
    cmd = superlink_command(cfg)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "9093"
    plain = caddy_config(ProxyConfig("h:1", "127.0.0.1:2", None, None, None, tmp_path))
    assert "tls" not in plain["apps"] and "transport" not in \
        plain["apps"]["http"]["servers"]["public"]["routes"][0]["handle"][0]


def test_the_superlinks_state_is_on_disk_unless_memory_is_asked_for(tmp_path):
    disk = superlink_command(CloudConfig(tmp_path, port=8000, link_port=9093))
    assert disk[disk.index("--database") + 1] == str(tmp_path.resolve() / "state.db")
    mem = superlink_command(CloudConfig(tmp_path, port=8000, link_port=9093,
                                        link_state="memory"))
    assert mem[mem.index("--database") + 1] == ":flwr-in-memory:"
    with pytest.raises(UnikdError, match="--link-state 'ram'"):
        CloudConfig(tmp_path, link_state="ram")


def test_cloud_gets_a_minimal_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = cloud_env(CloudConfig(tmp_path))
    assert "AWS_SECRET_ACCESS_KEY" not in env and env["LANG"] == "C.UTF-8"
    assert set(env) <= {"PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "FLWR_HOME",
                        "FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK",
                        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION",
                        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"}
    assert float(env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]) == float(CLOUD_TASK_POLL) < 1.0


def test_ca_is_offline_by_default(tmp_path):
    cfg = CloudConfig(tmp_path / "state", names=["cloud.lan"])
    with pytest.raises(UnikdError, match="missing ca.crt, server.pem, server.key.*certs init"):
        ensure_certs(cfg)
    assert not cfg.paths.dir.exists()  # nothing made behind the operator's back
    assert main(["certs", "init", "--dir", str(tmp_path / "pki"), "--name", "cloud.lan",
                 "--cloud-dir", str(cfg.paths.dir)]) == 0
    assert sorted(p.name for p in cfg.paths.dir.iterdir()) == ["ca.crt", "server.key",
                                                               "server.pem"]
    assert (cfg.paths.dir / "server.key").stat().st_mode & 0o777 == 0o600
    assert ensure_certs(cfg) == []
    (cfg.paths.dir / "server.key").chmod(0o644)
    with pytest.raises(UnikdError, match="chmod 600"):
        ensure_certs(cfg)


def test_node_registration_takes_a_public_key(tmp_path, capsys):
    from client.node.supernode import generate_key

    pub = generate_key(tmp_path / "node.key")
    for bad, why in ((tmp_path / "node.key", "is a PRIVATE key"),
                     (tmp_path / "nope.pub", "not found"), (pub, "cloud.json")):
        assert main(["certs", "register", str(bad), "--state-dir", str(tmp_path)]) != 0
        assert why in capsys.readouterr().err  # a valid key gets as far as the cloud


def test_resume_reads_only_inside_the_clouds_runs_folder(tmp_path):
    runs = tmp_path / "state" / "runs"
    good = runs / "submit-1" / "run-a"
    good.mkdir(parents=True)
    (good / "config.yaml").write_text("{}\n")
    assert resume_dir("runs/submit-1/run-a", runs) == good.resolve()
    assert resume_dir(str(good), runs) == good.resolve()
    for bad in ("/etc", "runs/../../etc", str(tmp_path)):
        with pytest.raises(UnikdError, match=f"{bad} is outside the cloud's runs folder"):
            resume_dir(bad, runs)
    with pytest.raises(UnikdError, match="no config.yaml"):
        resume_dir("runs/submit-1", runs)


def test_a_taken_public_port_stops_the_cloud_cleanly_and_loses_nothing(tmp_path):
    init_all(tmp_path / "pki", ["localhost", "127.0.0.1"])
    state = tmp_path / "state"
    cloud_files(tmp_path / "pki", state / "certs")
    state.chmod(0o755)
    (state / "runs").mkdir()
    (state / "runs" / "keep.txt").write_text("an earlier run\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = CloudConfig(state, host="127.0.0.1", port=port, link_port=free_port())
        with pytest.raises(UnikdError, match=f"proxy on 127.0.0.1:{port} did not come up"):
            start_cloud(cfg, timeout=60)
    assert (state / "runs" / "keep.txt").read_text() == "an earlier run\n"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("superlink.log", "proxy.log", "proxy.json", "state.db"):
        assert (state / name).stat().st_mode & 0o077 == 0, name
    with socket.socket() as probe:  # the SuperLink went down too: its port is free again
        probe.bind(("127.0.0.1", cfg.link_port))
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmd(p) and
            str(state) in _cmd(p)]
    assert left == [], left


def _cmd(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
