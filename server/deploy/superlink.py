"""The cloud's processes: a Flower SuperLink on loopback behind a Caddy proxy, started and stopped.

Secure by default (flower-notes §5.3): TLS on, SuperNode authentication on (a node must present
a key registered with `unikd certs register`), runtime dependency installation off, state in a
SQLite database under the state directory so registrations and runs survive a restart.

The SuperLink binds 127.0.0.1 only: its port carries the Control API (submit runs, register
nodes) and the Runtime API, neither authenticated in open-source Flower 1.42. The public port
is a Caddy proxy (server/deploy/proxy.py) that forwards the Fleet API and /health, nothing else.
Operators reach the Control API on the cloud itself, or through an SSH tunnel (flwr_cli.py).
The settings are cloud_config.py's; the TLS files are checked by cloud_certs.py.

State directory layout (`unikd cloud --state-dir D`, 0700, files written with umask 077):

    D/certs/             ca.crt, server.pem, server.key (copied from the operator's machine)
    D/state.db           the SuperLink's state: registered nodes, runs (`link_state="disk"`,
                         the default; "memory" keeps it in the SuperLink's memory: faster
                         rounds, but registrations and runs are gone after a restart)
    D/flwr-home/         FLWR_HOME of the SuperLink (installed app bundles)
    D/runs/              run folders written by the ServerApp (its working directory is D)
    D/superlink.log      process logs; D/proxy.log, D/proxy.json: the proxy's;
                         D/dashboard.log: the run dashboard's (server/watch/, 127.0.0.1 only)
    D/cloud.json         addresses, CA path, ports: what `unikd submit --state-dir D` reads

Every process is started in its own session (`start_new_session=True`) and stopped by signalling
its whole process group, so the SuperExec and ServerApp children go with it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from server.deploy.cloud_certs import check_server_names, ensure_certs
from server.deploy.cloud_config import CloudConfig, listen_address
from server.deploy.flwr_cli import FlwrCli
from server.deploy.health import wait_healthy
from server.deploy.proxy import ProxyConfig, start_proxy
from shared.errors import UnikdError
from shared.platform.flower_tools import flwr_tool, minimal_env
from shared.platform.processes import ProcessGroup, start_group

log = logging.getLogger(__name__)

STATE_UMASK = 0o077  # everything the cloud writes is owner-only
# The cloud's SuperExec looks for a ServerApp task every 1 s by default. Each look costs the
# SuperLink about a millisecond of CPU: at 0.1 s an idle cloud's SuperLink used ~10% of a core
# for this alone (measured); 0.5 s costs ~2% and at most half a second per run start.
CLOUD_TASK_POLL = "0.5"
IN_MEMORY_STATE = ":flwr-in-memory:"  # flower-superlink --database value for no database file


def superlink_command(cfg: CloudConfig) -> list[str]:
    """The `flower-superlink` command line: loopback, its database, TLS and node auth."""
    cmd = [flwr_tool("flower-superlink"), "--host", "127.0.0.1", "--port", str(cfg.link_port),
           "--database", (str(cfg.state_dir / "state.db") if cfg.link_state == "disk"
                          else IN_MEMORY_STATE),
           "--disable-runtime-dependency-installation"]
    if cfg.insecure:
        cmd.append("--insecure")
    else:
        p = cfg.paths
        cmd += ["--ssl-ca-certfile", str(p.ca_crt), "--ssl-certfile", str(p.server_crt),
                "--ssl-keyfile", str(p.server_key)]
    if cfg.auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def proxy_config(cfg: CloudConfig) -> ProxyConfig:
    """The proxy: the public address, forwarding to the SuperLink with the cloud's TLS files."""
    p = cfg.paths
    return ProxyConfig(listen=listen_address(cfg.host, cfg.port), upstream=cfg.control_address,
                       cert=None if cfg.insecure else p.server_crt,
                       key=None if cfg.insecure else p.server_key, ca=cfg.ca,
                       storage=cfg.state_dir / "proxy-data")


def cloud_env(cfg: CloudConfig) -> dict[str, str]:
    """A minimal environment for the SuperLink (and so its SuperExec and ServerApps)."""
    return minimal_env(cfg.state_dir / "flwr-home",
                       {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": CLOUD_TASK_POLL})


def proxy_env(cfg: CloudConfig) -> dict[str, str]:
    """A minimal environment for the proxy, its home and data in the state dir."""
    env = minimal_env()
    env["HOME"] = env["XDG_CONFIG_HOME"] = env["XDG_DATA_HOME"] = str(cfg.state_dir / "proxy-data")
    return env


@dataclass
class CloudProcesses:
    """The running SuperLink and proxy of one cloud; a context manager that stops them."""

    cfg: CloudConfig
    superlink: ProcessGroup
    proxy: ProcessGroup | None = None
    ready_seconds: float = 0.0
    dashboard: ProcessGroup | None = None  # the run dashboard and /metrics (loopback)

    @property
    def address(self) -> str:
        """The public (proxy) address: what edges dial."""
        return self.cfg.address

    @property
    def groups(self) -> set[int]:
        """Every process group the cloud runs (SuperLink, its SuperExec, the proxy)."""
        return (self.superlink.groups | (self.proxy.groups if self.proxy else set())
                | (self.dashboard.groups if self.dashboard else set()))

    @property
    def processes(self) -> list[ProcessGroup]:
        """The cloud's processes: SuperLink, proxy, dashboard (those it runs)."""
        return [p for p in (self.superlink, self.proxy, self.dashboard) if p is not None]

    def alive(self) -> bool:
        """Whether the SuperLink, the proxy and the dashboard all still run."""
        return all(p.alive() for p in self.processes)

    def stop(self) -> None:
        """Stop the dashboard, the proxy, then the SuperLink (each with its whole group)."""
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.superlink.stop()

    def cli(self, home: Path | None = None, sign_key: Path | None = None) -> FlwrCli:
        """The flwr CLI on the SuperLink's loopback (Control API) address."""
        return FlwrCli(self.cfg.control_address, self.cfg.ca,
                       home or self.cfg.state_dir / "cli-home", sign_key=sign_key)

    def __enter__(self) -> CloudProcesses:
        """The running cloud; leaving the block stops it."""
        return self

    def __exit__(self, *exc) -> None:
        """Stop the cloud, whatever happened in the block."""
        self.stop()


def prepare_state_dir(state_dir: Path) -> None:
    """The state dir exists and is owner-only (0700), whatever it was before."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if state_dir.stat().st_mode & 0o077:
        log.warning("%s was readable by others; made it 0700", state_dir)
    state_dir.chmod(0o700)


def start_cloud(cfg: CloudConfig, timeout: float = 60.0) -> CloudProcesses:
    """Start the SuperLink on loopback (cwd = state dir, so run folders land in <state>/runs),
    then the proxy on the public address; return once /health answers through the proxy."""
    prepare_state_dir(cfg.state_dir)
    old = os.umask(STATE_UMASK)  # our own writes; the children get it through preexec
    try:
        if not cfg.insecure:
            for made in ensure_certs(cfg):
                log.info("made %s", made)
            check_server_names(cfg)
        home = cfg.state_dir / "flwr-home"
        home.mkdir(exist_ok=True)
        return _start_both(cfg, timeout)
    finally:
        os.umask(old)


def _start_both(cfg: CloudConfig, timeout: float) -> CloudProcesses:
    """Start the SuperLink, then the proxy, each once healthy; write cloud.json. A failure
    stops whatever had started."""
    start = time.monotonic()
    link = start_group("flower-superlink", superlink_command(cfg),
                       cfg.state_dir / "superlink.log", cloud_env(cfg), cwd=cfg.state_dir,
                       umask=STATE_UMASK)
    proxy = None
    try:
        wait_healthy(cfg.control_address, cfg.ca, link, timeout)
        (cfg.state_dir / "proxy-data").mkdir(exist_ok=True)
        proxy = start_proxy(proxy_config(cfg), cfg.state_dir, proxy_env(cfg))
        try:
            wait_healthy(cfg.address, cfg.ca, proxy, timeout)
        except UnikdError as err:
            raise UnikdError(f"the proxy on {listen_address(cfg.host, cfg.port)} did not come "
                             f"up (port taken? see {cfg.state_dir / 'proxy.log'}): {err}"
                             ) from None
    except BaseException:
        if proxy is not None:
            proxy.stop()
        link.stop()
        raise
    try:
        dashboard = start_dashboard(cfg, timeout)
    except BaseException:
        proxy.stop()
        link.stop()
        raise
    link.refresh()  # its SuperExec runs in a session of its own: remember that group too
    info = {"address": cfg.control_address, "public": cfg.address, "host": cfg.host,
            "port": cfg.port, "link_port": cfg.link_port,
            "ca": str(cfg.ca) if cfg.ca else None, "auth": cfg.auth, "insecure": cfg.insecure,
            "pid": link.pid, "proxy_pid": proxy.pid, "runs": str(cfg.state_dir / "runs"),
            "dashboard": cfg.dashboard_address, "started": time.time()}
    (cfg.state_dir / "cloud.json").write_text(json.dumps(info, indent=2) + "\n")
    return CloudProcesses(cfg, link, proxy, time.monotonic() - start, dashboard)


def start_dashboard(cfg: CloudConfig, timeout: float) -> ProcessGroup | None:
    """The run dashboard and /metrics on 127.0.0.1 (server/watch/serve.py), once it answers;
    None when `dashboard_port` is 0. It reads the run folders and asks the SuperLink's Control
    API for the nodes: the ServerApp never waits for it."""
    if cfg.dashboard_address is None:
        return None
    cmd = [sys.executable, "-m", "server.watch.serve", "--state-dir", str(cfg.state_dir),
           "--port", str(cfg.dashboard_port)]
    dash = start_group("dashboard", cmd, cfg.state_dir / "dashboard.log", cloud_env(cfg),
                       cwd=cfg.state_dir, umask=STATE_UMASK)
    try:
        wait_healthy(cfg.dashboard_address, None, dash, timeout)
    except UnikdError as err:
        dash.stop()
        raise UnikdError(f"the dashboard on {cfg.dashboard_address} did not come up (port "
                         f"taken? --dashboard-port 0 turns it off; see "
                         f"{cfg.state_dir / 'dashboard.log'}): {err}") from None
    return dash
