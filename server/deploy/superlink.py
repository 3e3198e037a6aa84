"""Real deployment, cloud side: a Flower SuperLink behind a Caddy proxy, the `flwr` CLI, `submit`.

Secure by default (flower-notes §5.3): TLS on, SuperNode authentication on (a node must present
a key registered with `unikd certs register`), runtime dependency installation off, state in a
SQLite database under the state directory so registrations and runs survive a restart.

The SuperLink binds 127.0.0.1 only: its port carries the Control API (submit runs, register
nodes) and the Runtime API, neither authenticated in open-source Flower 1.42. The public port
is a Caddy proxy (server/deploy/proxy.py) that forwards the Fleet API and /health, nothing else.
Operators reach the Control API on the cloud itself, or through an SSH tunnel.

The CA is offline: the state dir receives ca.crt, server.pem and server.key, made on the
operator's machine with `unikd certs init`; `--dev-certs` keeps the old make-it-here shortcut.

State directory layout (`unikd cloud --state-dir D`, 0700, files written with umask 077):

    D/certs/             ca.crt, server.pem, server.key (copied from the operator's machine)
    D/state.db           the SuperLink's state: registered nodes, runs (`link_state="disk"`,
                         the default; "memory" keeps it in the SuperLink's memory: faster
                         rounds, but registrations and runs are gone after a restart)
    D/flwr-home/         FLWR_HOME of the SuperLink (installed app bundles)
    D/runs/              run folders written by the ServerApp (its working directory is D)
    D/superlink.log      process logs; D/proxy.log, D/proxy.json: the proxy's
    D/cloud.json         addresses, CA path, ports: what `unikd submit --state-dir D` reads

Every process is started in its own session (`start_new_session=True`) and stopped by signalling
its whole process group, so the SuperExec and ServerApp children go with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from server.deploy.certs import CertPaths, init_all
from server.deploy.proxy import ProxyConfig, start_proxy
from shared.errors import UnikdError
from shared.platform.flower_tools import flwr_env, flwr_tool, minimal_env
from shared.platform.processes import ProcessGroup, start_group

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000  # the public port: the proxy (Fleet API + /health only)
DEFAULT_LINK_PORT = 9093  # the SuperLink on 127.0.0.1: Fleet + Control + Runtime APIs
CONNECTION = "unikd"  # connection name in the private flwr CLI config
REPO_ROOT = Path(__file__).resolve().parents[2]  # server/deploy/ -> the repo
FINISHED = "finished:"
STATE_UMASK = 0o077  # everything the cloud writes is owner-only
# The cloud's SuperExec looks for a ServerApp task every 1 s by default. Each look costs the
# SuperLink about a millisecond of CPU: at 0.1 s an idle cloud's SuperLink used ~10% of a core
# for this alone (measured); 0.5 s costs ~2% and at most half a second per run start.
CLOUD_TASK_POLL = "0.5"


# ---------------------------------------------------------------- health


def ssl_context(ca: Path | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=str(ca)) if ca is not None else None


def health(address: str, ca: Path | None, timeout: float = 2.0) -> bool:
    """GET /health over HTTPS verified against `ca` (plain HTTP when `ca` is None)."""
    url = f"{'https' if ca else 'http'}://{address}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ssl_context(ca)) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def wait_healthy(address: str, ca: Path | None, proc: ProcessGroup | None,
                 timeout: float = 60.0) -> float:
    start = time.monotonic()
    while not health(address, ca):
        if proc is not None and not proc.alive():
            raise UnikdError(f"{proc.name} exited with code {proc.popen.returncode}:\n"
                             f"{proc.log_tail()}")
        if time.monotonic() - start > timeout:
            raise UnikdError(f"{address} not healthy after {timeout:.0f}s"
                             + (f":\n{proc.log_tail()}" if proc else ""))
        time.sleep(0.1)
    return time.monotonic() - start


# ---------------------------------------------------------------- cloud (SuperLink + proxy)


def local_address(host: str, port: int) -> str:
    """How processes on the cloud machine itself reach a listener on `host`."""
    if host in ("0.0.0.0", "", "::", "[::]"):
        return f"127.0.0.1:{port}"
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


LINK_STATES = ("disk", "memory")
IN_MEMORY_STATE = ":flwr-in-memory:"  # flower-superlink --database value for no database file


@dataclass
class CloudConfig:
    state_dir: Path
    host: str = "0.0.0.0"  # the proxy's (public) address
    port: int = DEFAULT_PORT
    link_port: int = DEFAULT_LINK_PORT  # the SuperLink, always on 127.0.0.1
    certs: Path | None = None  # default: <state_dir>/certs
    names: list[str] = field(default_factory=list)  # SANs if certs are made here (dev)
    insecure: bool = False
    auth: bool = True
    dev_certs: bool = False  # make a CA in the state dir when none is there (warns)
    link_state: str = "disk"  # "disk": D/state.db survives restarts; "memory": faster, volatile

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        if self.link_state not in LINK_STATES:
            raise UnikdError(f"--link-state {self.link_state!r}: expected one of "
                             f"{', '.join(LINK_STATES)}")
        self.certs = Path(self.certs).resolve() if self.certs else self.state_dir / "certs"
        if self.insecure and self.auth:
            self.auth = False  # Flower refuses node auth without TLS (flower-notes §5.3)
        if self.port == self.link_port:
            raise UnikdError(f"--port {self.port} and --link-port {self.link_port} must differ: "
                             f"the proxy and the SuperLink each need their own port")

    @property
    def paths(self) -> CertPaths:
        return CertPaths(self.certs)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        """The public (proxy) address as seen from this machine: what edges dial."""
        return local_address(self.host, self.port)

    @property
    def control_address(self) -> str:
        """The SuperLink itself, loopback only: the Control API for operators."""
        return f"127.0.0.1:{self.link_port}"

    @property
    def ca(self) -> Path | None:
        return None if self.insecure else self.paths.ca_crt


def default_names() -> list[str]:
    names = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


def offline_ca_hint(cfg: CloudConfig) -> str:
    names = " ".join(f"--name {n}" for n in (cfg.names or ["CLOUD_HOST_OR_IP"]))
    return (f"on your own machine (the CA stays there): `unikd certs init --dir pki {names} "
            f"--cloud-dir cloud-certs`, then copy cloud-certs/ (ca.crt, server.pem, server.key) "
            f"to {cfg.paths.dir} on the cloud; or pass --dev-certs to make a throw-away CA here")


def ensure_certs(cfg: CloudConfig) -> list[str]:
    """Check the cloud's TLS files; returns what was created (only with `dev_certs`).

    The cloud needs ca.crt + server.pem + server.key and nothing else: the CA key stays on
    the operator's machine.
    """
    p = cfg.paths
    if p.ca_crt.is_file() and p.server_crt.is_file() and p.server_key.is_file():
        if p.server_key.stat().st_mode & 0o077:
            raise UnikdError(f"{p.server_key}: readable by others; chmod 600 it")
        if p.ca_key.is_file():
            log.warning("%s is on the cloud: move it to the operator's machine; the cloud "
                        "needs only ca.crt, server.pem and server.key", p.ca_key)
        return []
    missing = [f.name for f in (p.ca_crt, p.server_crt, p.server_key) if not f.is_file()]
    if not cfg.dev_certs:
        raise UnikdError(f"{p.dir}: missing {', '.join(missing)}. Make them {offline_ca_hint(cfg)}")
    log.warning("--dev-certs: making a CA in %s; its key sits on the cloud, so whoever reads "
                "the state dir can impersonate this cloud. Use an offline CA for real devices.",
                p.dir)
    names = list(dict.fromkeys(cfg.names + ["localhost", "127.0.0.1"])) if cfg.names \
        else default_names()
    if p.ca_crt.is_file() and p.ca_key.is_file():
        from server.deploy.certs import make_server_cert

        make_server_cert(p.dir, names)
        return [str(p.server_crt)]
    if p.ca_crt.is_file() or p.ca_key.is_file() or p.server_crt.is_file():
        raise UnikdError(f"{p.dir}: incomplete certificate folder (need ca.crt, server.pem and "
                         f"server.key, or ca.crt + ca.key to issue them); see `unikd certs init`")
    init_all(p.dir, names)
    return [str(p.ca_crt), str(p.server_crt)]


def check_server_names(cfg: CloudConfig) -> None:
    """The proxy and the local tools dial 127.0.0.1: the certificate must name it."""
    from server.deploy.certs import describe

    names = describe(cfg.paths.dir).get("server", {}).get("names", [])
    if "127.0.0.1" not in names:
        raise UnikdError(f"{cfg.paths.server_crt} names {names}, not 127.0.0.1: the proxy "
                         f"verifies the SuperLink on loopback by that name; reissue it with "
                         f"`unikd certs init` (it always adds 127.0.0.1)")


def superlink_command(cfg: CloudConfig) -> list[str]:
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
    env = minimal_env()
    env["HOME"] = env["XDG_CONFIG_HOME"] = env["XDG_DATA_HOME"] = str(cfg.state_dir / "proxy-data")
    return env


@dataclass
class CloudProcesses:
    cfg: CloudConfig
    superlink: ProcessGroup
    proxy: ProcessGroup | None = None
    ready_seconds: float = 0.0

    @property
    def address(self) -> str:
        """The public (proxy) address: what edges dial."""
        return self.cfg.address

    @property
    def groups(self) -> set[int]:
        return self.superlink.groups | (self.proxy.groups if self.proxy else set())

    def alive(self) -> bool:
        return self.superlink.alive() and (self.proxy is None or self.proxy.alive())

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.superlink.stop()

    def cli(self, home: Path | None = None, sign_key: Path | None = None) -> FlwrCli:
        """The flwr CLI on the SuperLink's loopback (Control API) address."""
        return FlwrCli(self.cfg.control_address, self.cfg.ca,
                       home or self.cfg.state_dir / "cli-home", sign_key=sign_key)

    def __enter__(self) -> CloudProcesses:
        return self

    def __exit__(self, *exc) -> None:
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
    link.refresh()  # its SuperExec runs in a session of its own: remember that group too
    info = {"address": cfg.control_address, "public": cfg.address, "host": cfg.host,
            "port": cfg.port, "link_port": cfg.link_port,
            "ca": str(cfg.ca) if cfg.ca else None, "auth": cfg.auth, "insecure": cfg.insecure,
            "pid": link.pid, "proxy_pid": proxy.pid, "runs": str(cfg.state_dir / "runs"),
            "started": time.time()}
    (cfg.state_dir / "cloud.json").write_text(json.dumps(info, indent=2) + "\n")
    return CloudProcesses(cfg, link, proxy, time.monotonic() - start)


# ---------------------------------------------------------------- the flwr CLI


class FlwrCli:
    """The `flwr` CLI against one SuperLink, with a private FLWR_HOME holding its connection."""

    def __init__(self, address: str, ca: Path | None, home: Path | None = None,
                 sign_key: Path | None = None, signature: Path | None = None):
        self.address, self.ca = address, Path(ca).resolve() if ca else None
        self.sign_key, self.signature = sign_key, signature  # how start_run signs the bundle
        self.home = Path(home) if home else Path(tempfile.mkdtemp(prefix="unikd-flwr-cli-"))
        self.home.mkdir(parents=True, exist_ok=True)
        conn = [f'[superlink]\ndefault = "{CONNECTION}"\n', f"[superlink.{CONNECTION}]",
                f'address = "{address}"']
        conn.append(f'root-certificates = "{self.ca}"' if self.ca else "insecure = true")
        (self.home / "config.toml").write_text("\n".join(conn) + "\n")
        self._control = None  # the in-process Control API client, made on first use

    def control(self, what: str, call):
        """`call(client)` on the in-process Control API client (`flower_internals`): the
        status calls a deployment repeats (node lists, run status) without a `flwr` process
        each. Any failure is a UnikdError naming `what`; the client is rebuilt next time."""
        from shared.platform import flower_internals

        try:
            if self._control is None:
                flower_internals.check()
                self._control = flower_internals.control_client(self.address, self.ca,
                                                                self.home)
            return call(self._control)
        except UnikdError:
            raise
        except Exception as err:  # unreachable, TLS, a SuperLink restarting, refused
            self.close()
            raise UnikdError(f"{what} at {self.address} failed: "
                             f"{flower_internals.control_error(err)}") from None

    def close(self) -> None:
        if self._control is not None:
            try:
                self._control.close()
            finally:
                self._control = None

    def run(self, args: list[str], timeout: float = 120.0, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([flwr_tool("flwr"), *args], env=flwr_env(self.home),
                              capture_output=True, text=True, timeout=timeout,
                              cwd=str(cwd) if cwd else None, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise UnikdError(f"flwr {' '.join(args[:2])} failed (exit {proc.returncode}): "
                             f"{_last_lines(proc.stdout + proc.stderr)}")
        return proc

    # -- nodes
    def register(self, public_key: Path, name: str | None = None) -> int:
        """`flwr supernode register KEY --name NAME`; the node id. A key already registered
        is an error whose text says "already in use" (the SuperLink's words)."""
        from shared.platform.flower_internals import register_node

        return self.control(f"registering {public_key}",
                            lambda c: register_node(c, public_key, name or None))

    def nodes(self) -> list[dict]:
        """Every registered node: node-id, owner-name, status (as `flwr supernode list`)."""
        from shared.platform.flower_internals import list_nodes

        return self.control("listing the nodes", list_nodes)

    def online_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if str(n.get("status", "")).lower() == "online"]

    # -- runs
    def app_signature(self, fab_hash: str, app: Path) -> str | None:
        """The operator's signature over the bundle's hash: made here with `sign_key`, or read
        from a `unikd app sign` file (checked against this bundle)."""
        from shared.platform import app_signing

        if self.sign_key is None and self.signature is None:
            return None
        if self.sign_key is not None:
            return app_signing.sign(app_signing.load_private_key(self.sign_key), fab_hash)
        return read_signature_file(Path(self.signature), fab_hash, app)  # type: ignore[arg-type]

    def start_run(self, app: Path, run_config: dict) -> int:
        """`flwr run APP` in-process: the bundle is built once, so the signature in the run
        config signs exactly the bytes sent."""
        from shared.platform import flower_internals
        from shared.platform.app_signing import RUN_CONFIG_KEY

        flower_internals.check()
        fab = flower_internals.fab_bytes(app)
        signature = self.app_signature(hashlib.sha256(fab).hexdigest(), app)
        if signature is not None:
            run_config = {**run_config, RUN_CONFIG_KEY: signature}
        values = {k: str(v) for k, v in run_config.items()}
        return self.control("starting the run",
                            lambda c: flower_internals.start_run(c, fab, values))

    def run_info(self, run_id: int) -> dict:
        """run-id, status ('finished:completed', ...) and status-details (as `flwr ls`)."""
        from shared.platform.flower_internals import run_status

        info = self.control(f"reading run {run_id}'s status", lambda c: run_status(c, run_id))
        if info is None:
            raise UnikdError(f"run {run_id} not found on {self.address}")
        return info

    def status(self, run_id: int) -> str:
        return str(self.run_info(run_id).get("status", ""))

    def follow(self, run_id: int, timeout: float) -> None:
        """One `flwr log RUN --stream`: returns when the run has finished (the SuperLink ends
        the stream then) or the connection broke; raises TimeoutExpired after `timeout`."""
        subprocess.run([flwr_tool("flwr"), "log", str(run_id), CONNECTION, "--stream"],
                       env=flwr_env(self.home), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=timeout)

    def logs(self, run_id: int) -> str:
        """The run's log (`flwr log RUN --show`); empty when the cloud cannot be read."""
        from shared.platform.flower_internals import run_logs

        try:
            return self.control(f"reading run {run_id}'s log", lambda c: run_logs(c, run_id))
        except UnikdError as err:
            log.warning("%s", err)
            return ""

    def stop_run(self, run_id: int) -> None:
        self.run(["stop", str(run_id), CONNECTION], check=False)


def _last_lines(text: str, n: int = 8) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


# ---------------------------------------------------------------- submit


def app_dir(path: Path | None = None) -> Path:
    """The Flower app to submit: a folder whose pyproject.toml has [tool.flwr.app]."""
    d = Path(path).resolve() if path else REPO_ROOT
    pp = d / "pyproject.toml"
    if not pp.is_file() or "flwr" not in tomllib.loads(pp.read_text()).get("tool", {}):
        raise UnikdError(f"{d}: no pyproject.toml with [tool.flwr.app]; pass --app DIR")
    return d


def app_config_keys(app: Path) -> set[str]:
    data = tomllib.loads((app / "pyproject.toml").read_text())
    return set(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def config_overrides(config: str | None, sets: list[str]) -> list[str]:
    """The run's config as `section.key=value` overrides of the defaults, validated here.

    The cloud rebuilds exactly this RunConfig from the defaults, so a config file on the
    submitting machine need not exist on the cloud. Without a config file there, the cloud
    applies the dataset's recipe (shared/config/schema.py) under these values, from the same app
    bundle: so every key that differs from the defaults OR from that recipe travels.
    """
    from shared.config import RunConfig, load_config

    cfg = load_config(config, sets)
    want, base = _flat(cfg.to_dict()), _flat(RunConfig().to_dict())
    recipe = _flat(load_config(None, [f"data.dataset={cfg.data.dataset}"]).to_dict())
    out = []
    for key, value in want.items():
        if value == base.get(key) and value == recipe.get(key):
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        if not text or any(c.isspace() for c in text):
            raise UnikdError(f"config key '{key}' = {value!r}: values sent to the cloud may not "
                             f"be empty or contain spaces")
        out.append(f"{key}={text}")
    return out


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class SubmitResult:
    run_id: int
    status: str
    seconds: float
    run_dir: Path | None = None
    remote_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def wait_for_run(cli: FlwrCli, run_id: int, timeout: float, poll: float = 1.0,
                 on_status=None, unreachable: float = 120.0) -> str:
    """Follow the run with one streaming `flwr log` call until it is finished:*, then read
    its status once; the status string.

    A broken stream (the cloud restarting) is followed again every `poll` seconds. Gives up
    after `timeout`, or when the cloud has not answered for `unreachable` seconds.
    """
    deadline = time.monotonic() + timeout
    last, last_contact = "", time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining > 0:
                cli.follow(run_id, remaining)
        except subprocess.TimeoutExpired:
            pass
        try:
            status = cli.status(run_id)
            last_contact = time.monotonic()
        except UnikdError as err:  # a transient CLI/network hiccup: retry for a while
            log.debug("status check failed: %s", err)
            if time.monotonic() - last_contact > unreachable:
                raise UnikdError(f"lost contact with the cloud at {cli.address} for "
                                 f"{unreachable:.0f}s while run {run_id} was '{last}': {err}"
                                 ) from None
            status = last
        if status != last and on_status is not None:
            on_status(status)
        last = status
        if status.startswith(FINISHED):
            return status
        if time.monotonic() > deadline:
            raise UnikdError(f"run {run_id} still '{status}' after {timeout:.0f}s; it keeps "
                             f"running on the cloud (stop it with `flwr stop {run_id}`)")
        time.sleep(poll)


def read_signature_file(path: Path, fab_hash: str, app: Path) -> str:
    """The signature in a `unikd app sign` file, if it was made for exactly this bundle."""
    try:
        data = json.loads(Path(path).read_text())
        signed, signature = str(data["fab_hash"]), str(data["signature"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UnikdError(f"--app-signature {path}: not a `unikd app sign` file ({err})"
                         ) from None
    if signed != fab_hash:
        raise UnikdError(f"--app-signature {path} signs bundle {signed[:12]}, but {app} builds "
                         f"{fab_hash[:12]}: the app folder differs from the one the operator "
                         f"signed; nothing was submitted")
    return signature


RESUME_KEY = "resume"  # run-config key: a run folder on the cloud to continue


def submit(cli: FlwrCli, overrides: list[str], out: Path, state_dir: Path | None = None,
           app: Path | None = None, timeout: float = 3600.0, poll: float = 1.0,
           resume: str | None = None, extra_run_config: dict | None = None,
           on_status=None, unreachable: float = 120.0) -> SubmitResult:
    """Run the FedUNI-KD app on a running cloud, wait, and fetch its run folder into `out`.

    The ServerApp writes its run folder under `runs/submit-<token>/` of the cloud's state dir
    (its working directory); with `state_dir` (this machine is the cloud, or shares its volume)
    that folder is copied here. The run log and status are always saved.

    `resume` names a run folder on the cloud to continue from its last checkpoint, with that
    run's own config.yaml (so no overrides may be given: they would change the config hash).
    """
    app = app_dir(app)
    keys = app_config_keys(app)
    extra = dict(extra_run_config or {})
    if resume:
        if overrides:
            raise UnikdError("--resume continues a run with its own config.yaml; drop --config "
                             "and --set")
        extra[RESUME_KEY] = str(resume)
        remote_rel, run_config = None, {"overrides": ""}
    else:
        token = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        remote_rel = Path("runs") / f"submit-{token}"
        run_config = {"overrides": " ".join([*overrides, f"out={remote_rel}"])}
    for k, v in extra.items():
        if k not in keys:
            raise UnikdError(f"run-config key '{k}' is not declared in {app}/pyproject.toml "
                             f"[tool.flwr.app.config]; the cloud app cannot take it yet")
        run_config[k] = v
    start = time.monotonic()
    run_id = cli.start_run(app, run_config)
    log.info("submitted run %d to %s", run_id, cli.address)
    status = wait_for_run(cli, run_id, timeout, poll, on_status, unreachable)
    seconds = time.monotonic() - start
    remote_dir = None
    if state_dir is not None:
        remote_dir = (Path(state_dir) / resume) if resume else Path(state_dir) / remote_rel
    result = SubmitResult(run_id, status, seconds, remote_dir=remote_dir)
    result.run_dir = fetch_run(cli, result, Path(out), resumed=bool(resume))
    return result


def fetch_run(cli: FlwrCli, result: SubmitResult, out: Path, resumed: bool = False) -> Path:
    """The run folder on this machine: the cloud's folder (when reachable), log and status."""
    from shared.platform.runs import make_run_dir, write_json

    remote = None
    if resumed and result.remote_dir is not None and result.remote_dir.is_dir():
        remote = result.remote_dir  # the continued run's own folder
    elif result.remote_dir is not None and result.remote_dir.is_dir():
        subs = sorted(d for d in result.remote_dir.iterdir() if d.is_dir())
        remote = subs[-1] if subs else None
    name = f"deploy-run{result.run_id}"
    if remote is not None:
        run_dir = make_run_dir(out, f"{remote.name.split('-', 2)[-1]}-run{result.run_id}")
        shutil.copytree(remote, run_dir, dirs_exist_ok=True)
    else:
        run_dir = make_run_dir(out, name)
    (run_dir / "server.log").write_text(cli.logs(result.run_id))
    write_json(run_dir / "deployment.json", {
        "run_id": result.run_id, "status": result.status, "superlink": cli.address,
        "wall_seconds": result.seconds,
        "cloud_run_dir": str(remote) if remote is not None else None,
        "fetched": remote is not None})
    return run_dir
