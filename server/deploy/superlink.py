"""Real deployment, cloud side: a Flower SuperLink with our defaults, the `flwr` CLI, `submit`.

Secure by default (flower-notes §5.3): TLS on, SuperNode authentication on (a node must present
a key registered with `unikd certs register`), runtime dependency installation off, state in a
SQLite database under the state directory so registrations and runs survive a restart.

State directory layout (`unikd cloud --state-dir D`):

    D/certs/             CA, server certificate, node keys (made on first start if absent)
    D/state.db           the SuperLink's state: registered nodes, runs
    D/flwr-home/         FLWR_HOME of the SuperLink (installed app bundles)
    D/runs/              run folders written by the ServerApp (its working directory is D)
    D/superlink.log      process logs
    D/cloud.json         address, CA path, port: what `unikd submit --state-dir D` reads

Every process is started in its own session (`start_new_session=True`) and stopped by signalling
its whole process group, so the SuperExec and ServerApp children go with it.
"""

from __future__ import annotations

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
from shared.errors import UnikdError
from shared.flower_tools import flwr_env, flwr_tool
from shared.processes import ProcessGroup, start_group

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000  # Flower 1.42: Fleet + Control + Runtime APIs share one HTTP(S) port
CONNECTION = "unikd"  # connection name in the private flwr CLI config
REPO_ROOT = Path(__file__).resolve().parents[2]  # server/deploy/ -> the repo
FINISHED = "finished:"


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
        time.sleep(0.2)
    return time.monotonic() - start


# ---------------------------------------------------------------- cloud (SuperLink)


def local_address(host: str, port: int) -> str:
    """How processes on the cloud machine itself reach the SuperLink."""
    if host in ("0.0.0.0", "", "::", "[::]"):
        return f"127.0.0.1:{port}"
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class CloudConfig:
    state_dir: Path
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    certs: Path | None = None  # default: <state_dir>/certs
    names: list[str] = field(default_factory=list)  # SANs if certs are made here
    insecure: bool = False
    auth: bool = True

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.certs = Path(self.certs).resolve() if self.certs else self.state_dir / "certs"
        if self.insecure and self.auth:
            self.auth = False  # Flower refuses node auth without TLS (flower-notes §5.3)

    @property
    def paths(self) -> CertPaths:
        return CertPaths(self.certs)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        return local_address(self.host, self.port)

    @property
    def ca(self) -> Path | None:
        return None if self.insecure else self.paths.ca_crt


def default_names() -> list[str]:
    names = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


def ensure_certs(cfg: CloudConfig) -> list[str]:
    """Make the CA and server certificate on first start; returns what was created.

    A folder with ca.crt + server.pem + server.key is used as is (ca.key may live offline).
    """
    p = cfg.paths
    if p.ca_crt.is_file() and p.server_crt.is_file() and p.server_key.is_file():
        return []
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
    """Local tools dial `cfg.address`: warn when the certificate does not name that host."""
    from server.deploy.certs import describe

    names = describe(cfg.paths.dir).get("server", {}).get("names", [])
    host = cfg.address.rsplit(":", 1)[0].strip("[]")
    if host not in names:
        log.warning("%s names %s, not %s: `unikd cloud --health-check` and `--state-dir` "
                    "tools on this machine cannot verify it; reissue it with "
                    "`unikd certs init --name ...`", cfg.paths.server_crt, names, host)


def superlink_command(cfg: CloudConfig) -> list[str]:
    cmd = [flwr_tool("flower-superlink"), "--host", cfg.host, "--port", str(cfg.port),
           "--database", str(cfg.state_dir / "state.db"),
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


@dataclass
class CloudProcesses:
    cfg: CloudConfig
    superlink: ProcessGroup
    ready_seconds: float = 0.0

    @property
    def address(self) -> str:
        return self.cfg.address

    def stop(self) -> None:
        self.superlink.stop()

    def cli(self, home: Path | None = None) -> FlwrCli:
        return FlwrCli(self.address, self.cfg.ca, home or self.cfg.state_dir / "cli-home")

    def __enter__(self) -> CloudProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_cloud(cfg: CloudConfig, timeout: float = 60.0) -> CloudProcesses:
    """Start the SuperLink (cwd = state dir, so run folders land in <state>/runs) and wait
    until it answers /health over TLS."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.insecure:
        for made in ensure_certs(cfg):
            log.info("made %s", made)
        check_server_names(cfg)
    home = cfg.state_dir / "flwr-home"
    home.mkdir(exist_ok=True)
    proc = start_group("flower-superlink", superlink_command(cfg),
                       cfg.state_dir / "superlink.log", flwr_env(home), cwd=cfg.state_dir)
    try:
        ready = wait_healthy(cfg.address, cfg.ca, proc, timeout)
    except BaseException:
        proc.stop()
        raise
    proc.refresh()  # its SuperExec runs in a session of its own: remember that group too
    info = {"address": cfg.address, "host": cfg.host, "port": cfg.port,
            "ca": str(cfg.ca) if cfg.ca else None, "auth": cfg.auth, "insecure": cfg.insecure,
            "pid": proc.pid, "runs": str(cfg.state_dir / "runs"), "started": time.time()}
    (cfg.state_dir / "cloud.json").write_text(json.dumps(info, indent=2) + "\n")
    return CloudProcesses(cfg, proc, ready)


# ---------------------------------------------------------------- the flwr CLI


class FlwrCli:
    """The `flwr` CLI against one SuperLink, with a private FLWR_HOME holding its connection."""

    def __init__(self, address: str, ca: Path | None, home: Path | None = None):
        self.address, self.ca = address, Path(ca).resolve() if ca else None
        self.home = Path(home) if home else Path(tempfile.mkdtemp(prefix="unikd-flwr-cli-"))
        self.home.mkdir(parents=True, exist_ok=True)
        conn = [f'[superlink]\ndefault = "{CONNECTION}"\n', f"[superlink.{CONNECTION}]",
                f'address = "{address}"']
        conn.append(f'root-certificates = "{self.ca}"' if self.ca else "insecure = true")
        (self.home / "config.toml").write_text("\n".join(conn) + "\n")

    def run(self, args: list[str], timeout: float = 120.0, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([flwr_tool("flwr"), *args], env=flwr_env(self.home),
                              capture_output=True, text=True, timeout=timeout,
                              cwd=str(cwd) if cwd else None, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise UnikdError(f"flwr {' '.join(args[:2])} failed (exit {proc.returncode}): "
                             f"{_last_lines(proc.stdout + proc.stderr)}")
        return proc

    def json(self, args: list[str], timeout: float = 120.0, cwd: Path | None = None) -> dict:
        proc = self.run([*args, "--format", "json"], timeout, check=False, cwd=cwd)
        try:
            data = json.loads(_json_part(proc.stdout))
        except ValueError:
            raise UnikdError(f"flwr {' '.join(args[:2])}: no JSON in the output (exit "
                             f"{proc.returncode}): {_last_lines(proc.stdout + proc.stderr)}"
                             ) from None
        if proc.returncode != 0 or data.get("success") is False:
            raise UnikdError(f"flwr {' '.join(args[:2])} failed: "
                             f"{data.get('error-message') or _last_lines(proc.stdout)}")
        return data

    # -- nodes
    def register(self, public_key: Path, name: str | None = None) -> int:
        args = ["supernode", "register", str(public_key), CONNECTION]
        if name:
            args += ["--name", name]
        data = self.json(args)
        return int(data["node-id"])

    def nodes(self) -> list[dict]:
        return list(self.json(["supernode", "list", CONNECTION]).get("nodes", []))

    def online_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if str(n.get("status", "")).lower() == "online"]

    # -- runs
    def start_run(self, app: Path, run_config: dict) -> int:
        cfg_file = self.home / f"run-config-{os.getpid()}-{time.monotonic_ns()}.toml"
        cfg_file.write_text("".join(f"{k} = {json.dumps(str(v))}\n" for k, v in run_config.items()))
        try:
            data = self.json(["run", str(app), CONNECTION, "--run-config", str(cfg_file)])
        finally:
            cfg_file.unlink(missing_ok=True)
        return int(data["run-id"])

    def run_info(self, run_id: int) -> dict:
        data = self.json(["ls", CONNECTION, "--run-id", str(run_id)])
        runs = data.get("runs", [])
        if not runs:
            raise UnikdError(f"run {run_id} not found on {self.address}")
        return runs[0]

    def status(self, run_id: int) -> str:
        return str(self.run_info(run_id).get("status", ""))

    def logs(self, run_id: int) -> str:
        proc = self.run(["log", str(run_id), CONNECTION, "--show"], check=False)
        return proc.stdout

    def stop_run(self, run_id: int) -> None:
        self.run(["stop", str(run_id), CONNECTION], check=False)


def _json_part(text: str) -> str:
    """The JSON object in a CLI output that may carry log lines around it."""
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if start >= 0 and end > start else text


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
    submitting machine need not exist on the cloud.
    """
    from shared.config import RunConfig, load_config

    cfg = load_config(config, sets)
    want, base = _flat(cfg.to_dict()), _flat(RunConfig().to_dict())
    out = []
    for key, value in want.items():
        if value == base.get(key):
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
    """Poll `flwr ls --run-id` until the run is finished:*; the status string.

    Gives up after `timeout`, or when the cloud has not answered for `unreachable` seconds.
    """
    deadline = time.monotonic() + timeout
    last, last_contact = "", time.monotonic()
    while True:
        try:
            status = cli.status(run_id)
            last_contact = time.monotonic()
        except UnikdError as err:  # a transient CLI/network hiccup: retry for a while
            log.debug("status poll failed: %s", err)
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
    from shared.runs import make_run_dir, write_json

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
