"""Real deployment, edge side: a Flower SuperNode pointed at this device's target windows.

Imports nothing from the cloud side (server/) and needs no source data: the ClientApp code
arrives inside the app bundle the cloud sends, and reads the windows named by the node config
(client/node/node_config.py): its AdaTime folder and domain, or its window store, its client id,
its model directory and its operator's privacy budget.

TLS is on unless `insecure`: the SuperLink's certificate must chain to `ca`. With `key`, the node
authenticates with its ECDSA key, which the operator registered (`unikd certs register`).
With `app_key` (the operator's Ed25519 public key), the node runs only app bundles the operator
signed: the SuperNode starts through client/node/launcher.py, which runs our executor
(client/node/executor.py) in place of Flower's SuperExec.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from client.node.node_config import DEFAULT_DEVICE, Budget, NodeConfig
from client.node.polling import DEFAULT_HEARTBEAT, NODE_IDLE_POLL
from shared.errors import UnikdError
from shared.platform.secrets import write_secret
from shared.platform.flower_tools import flwr_env
from shared.platform.processes import child_preexec

DEFAULT_RUNTIME_PORT = 9094  # the SuperNode's local (loopback) runtime API


@dataclass
class EdgeConfig:
    superlink: str
    data: Path | None  # an AdaTime folder (training windows, or test windows beside a store)
    ca: Path | None = None
    key: Path | None = None
    insecure: bool = False
    client_id: int = 0
    domain: str | None = None
    port: int = DEFAULT_RUNTIME_PORT
    home: Path | None = None  # FLWR_HOME of the node (app bundles); default ~/.unikd/edge
    max_retries: int | None = None  # None: retry forever (a device waits for its cloud)
    max_wait: float | None = None
    app_key: Path | None = None  # the operator's app-signing public key
    allow_unsigned: bool = False  # dev only: run any bundle the cloud sends
    task_poll: float = 0.05  # executor: seconds between task polls on the local runtime API
    node_poll: float = 0.1  # SuperNode: poll of the cloud while a run sends work (Flower: 3 s)
    idle_poll: float = NODE_IDLE_POLL  # the polls back off after 10 s without work (polling.py)
    store: Path | None = None  # the window store `unikd serve` fills: trains on its windows
    model_dir: Path | None = None  # the service's model directory: gets the final student
    max_epsilon: float = 0.0  # the operator's privacy budget (client/node/budget.py); 0: none
    dp_delta: float = 1e-5  # the delta that budget is stated at
    heartbeat: float = DEFAULT_HEARTBEAT  # seconds; the cloud sees a dead node after two
    metrics_file: Path | None = None  # the executor's task tallies (client/node/node_metrics.py)
    device: str = DEFAULT_DEVICE  # where the ClientApp computes (node config `device`)

    def __post_init__(self) -> None:
        self.app_key = Path(self.app_key).expanduser().resolve() if self.app_key else None
        self.data = Path(self.data).expanduser().resolve() if self.data else None
        self.store = Path(self.store).expanduser().resolve() if self.store else None
        self.model_dir = Path(self.model_dir).expanduser().resolve() if self.model_dir else None
        self.ca = Path(self.ca).expanduser().resolve() if self.ca else None
        self.key = Path(self.key).expanduser().resolve() if self.key else None
        self.metrics_file = Path(self.metrics_file).expanduser().resolve() \
            if self.metrics_file else None
        self.home = Path(self.home).expanduser().resolve() if self.home else \
            Path.home() / ".unikd" / "edge"


def outcome(text: str) -> str:
    """Why a SuperNode stopped, from its output. It prints "Exit Code: 305" both when TLS
    verification fails and when the SuperLink refuses its key, then exits 1."""
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL/TLS handshake error" in text:
        return "tls"
    if "Failed to activate SuperNode" in text:
        return "refused"
    return "other"


def data_domains(folder: Path) -> list[str]:
    return sorted(p.stem[len("train_"):] for p in Path(folder).glob("train_*.pt"))


def validate(cfg: EdgeConfig) -> str | None:
    """Refuse to start with a setup that can only fail later; the domain to read (None: the
    node has only a window store)."""
    if ":" not in cfg.superlink:
        raise UnikdError(f"--superlink {cfg.superlink!r}: give HOST:PORT")
    if cfg.data is None and cfg.store is None:
        raise UnikdError("give --data DIR (an AdaTime folder) or --store DB (the window store "
                         "`unikd serve` fills), or both")
    if cfg.store is not None:
        from client.node.device import check_device

        check_device(cfg.store, cfg.model_dir)
    if cfg.max_epsilon:
        from client.node.budget import read_ledger

        read_ledger(operator_budget(cfg).ledger)  # a damaged ledger stops the start, not a run
    domain = data_domain(cfg) if cfg.data is not None else None
    check_trust(cfg)
    check_compute(cfg.device)
    return domain


def check_compute(device: str) -> None:
    """`--device cuda` on a device without CUDA stops the start, not every round later."""
    if device != "cuda":
        return
    from shared.errors import ConfigError
    from shared.unikd.compute import resolve_device  # torch: only where cuda is asked for

    try:
        resolve_device(device)
    except ConfigError as err:
        raise UnikdError(f"--device cuda: {err.problem}") from None


def data_domain(cfg: EdgeConfig) -> str:
    """The domain this node reads from its --data folder."""
    if not cfg.data.is_dir():
        raise UnikdError(f"--data {cfg.data}: not a folder")
    domains = data_domains(cfg.data)
    if cfg.domain is None:
        if len(domains) != 1:
            raise UnikdError(f"--data {cfg.data}: holds {len(domains)} domains "
                             f"({', '.join(domains) or 'no train_<domain>.pt'}); pick one with "
                             f"--domain")
        domain = domains[0]
    else:
        domain = cfg.domain
        if domain not in domains:
            raise UnikdError(f"--data {cfg.data}: no train_{domain}.pt "
                             f"(found: {', '.join(domains) or 'none'})")
    return domain


def check_trust(cfg: EdgeConfig) -> None:
    """TLS, node key and app key: present, private where private, and consistent."""
    if cfg.insecure:
        if cfg.key is not None:
            raise UnikdError("--key needs TLS: node authentication is refused without it")
    else:
        if cfg.ca is None or not cfg.ca.is_file():
            raise UnikdError(f"--ca {cfg.ca}: the CA certificate (ca.crt) is required for TLS "
                             f"(or pass --insecure on a trusted lab network)")
    if cfg.key is not None and not cfg.key.is_file():
        raise UnikdError(f"--key {cfg.key}: not found")
    if cfg.key is not None and cfg.key.stat().st_mode & 0o077:
        raise UnikdError(f"--key {cfg.key}: readable by others; chmod 600 it")
    if cfg.app_key is not None:
        from shared.platform.app_signing import load_public_key

        try:
            load_public_key(cfg.app_key)
        except UnikdError as err:
            raise UnikdError(f"--app-key: {err}") from None
    elif not cfg.allow_unsigned:
        raise UnikdError("--app-key OPERATOR.pub is required: the edge runs only app bundles "
                         "the operator signed (dev only: --allow-unsigned-apps)")


def node_config(cfg: EdgeConfig, domain: str | None) -> str:
    """The `--node-config` the ClientApp reads (client/node/node_config.py): its windows (an
    AdaTime folder's `domain`, or only labelled test windows beside a store), its client id,
    its model directory, its operator's budget and where it computes."""
    def text(path: Path | None) -> str | None:
        return None if path is None else str(path)

    return NodeConfig(client_id=cfg.client_id, data_path=text(cfg.data),
                      domain=domain if cfg.data is not None else None,
                      store_path=text(cfg.store), model_dir=text(cfg.model_dir),
                      budget=operator_budget(cfg) if cfg.max_epsilon > 0 else None,
                      device=cfg.device).to_arg()


def operator_budget(cfg: EdgeConfig) -> Budget:
    """The operator's privacy budget (client/node/budget.py), checked as the ClientApp will,
    with the ledger kept beside the node's app bundles, across runs."""
    from client.node.budget import LEDGER_FILE

    return Budget(cfg.max_epsilon, cfg.dp_delta, cfg.home / LEDGER_FILE)


def launcher_args(cfg: EdgeConfig) -> list[str]:
    """Our node launcher: short polls, then the executor and Flower's SuperNode."""
    cmd = [sys.executable, "-m", "client.node.launcher",
           "--runtime-api-address", f"127.0.0.1:{cfg.port}",
           "--task-poll", str(cfg.task_poll), "--node-poll", str(cfg.node_poll),
           "--idle-poll", str(cfg.idle_poll), "--heartbeat", str(cfg.heartbeat)]
    if cfg.app_key is not None:
        cmd += ["--app-key", str(cfg.app_key)]
    if cfg.allow_unsigned:
        cmd.append("--allow-unsigned-apps")
    if cfg.metrics_file is not None:
        cmd += ["--metrics-file", str(cfg.metrics_file)]
    return [*cmd, "--"]


def supernode_command(cfg: EdgeConfig) -> list[str]:
    domain = validate(cfg)
    cmd = [*launcher_args(cfg), "--superlink", cfg.superlink,
           "--port", str(cfg.port), "--node-config", node_config(cfg, domain)]
    if cfg.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(cfg.ca)]
    if cfg.key is not None:
        cmd += ["--auth-supernode-private-key", str(cfg.key)]
    if cfg.max_retries is not None:
        cmd += ["--max-retries", str(cfg.max_retries)]
    if cfg.max_wait is not None:
        cmd += ["--max-wait-time", str(cfg.max_wait)]
    return cmd


def edge_env(cfg: EdgeConfig) -> dict[str, str]:
    cfg.home.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
    return flwr_env(cfg.home)


@dataclass
class EdgeProcess:
    """A SuperNode started in its own session; `stop()` signals its whole process group
    (the node, its SuperExec and any ClientApp process)."""

    popen: subprocess.Popen
    log_path: Path | None
    lines: deque = field(default_factory=lambda: deque(maxlen=200))
    pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self) -> None:
        for raw in self.popen.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace")
            self.lines.append(line.rstrip("\n"))
            sys.stdout.write(line)
            sys.stdout.flush()

    def output(self) -> str:
        if self.log_path is not None and self.log_path.is_file():
            return self.log_path.read_text(errors="replace")
        return "\n".join(self.lines)

    def outcome(self) -> str:
        """Why a node stopped: 'tls' (the cloud's certificate does not chain to our CA),
        'refused' (the cloud does not know this node's key), or 'other'."""
        return outcome(self.output())

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        code = self.popen.wait(timeout=timeout)
        if self.pump is not None:
            self.pump.join(5.0)  # the last lines (the reason it stopped) are read
        return code

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-n:])

    def stop(self, timeout: float = 10.0) -> int | None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.popen.poll() is None:
                time.sleep(0.1)
            if self.popen.poll() is not None:
                try:
                    os.killpg(self.pid, signal.SIGKILL)  # stragglers in the group
                except ProcessLookupError:
                    pass
                break
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


def start_edge(cfg: EdgeConfig, log_path: Path | None = None, echo: bool = False) -> EdgeProcess:
    """Start the SuperNode in its own session. Its output goes to `log_path`, or (with `echo`)
    through this process to stdout, kept for `outcome()`."""
    cmd = supernode_command(cfg)
    out = open(log_path, "ab") if log_path is not None else None
    try:
        popen = subprocess.Popen(cmd, stdout=out if out else subprocess.PIPE if echo else None,
                                 stderr=subprocess.STDOUT if (out or echo) else None,
                                 env=edge_env(cfg), start_new_session=True,
                                 stdin=subprocess.DEVNULL, cwd=str(cfg.home),
                                 preexec_fn=child_preexec())
    finally:
        if out is not None:
            out.close()
    proc = EdgeProcess(popen, log_path)
    if echo and popen.stdout is not None:
        proc.pump = threading.Thread(target=proc._pump, daemon=True)
        proc.pump.start()
    return proc


def generate_key(path: Path, overwrite: bool = False) -> Path:
    """An ECDSA P-384 node key made on the device (OpenSSH format, 0600); returns the .pub path.

    Only the public key leaves the device: the operator registers it on the cloud.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path).expanduser()
    pub = path.with_name(path.name + ".pub")
    if path.exists() and not overwrite:
        raise UnikdError(f"{path} exists; pass --force to replace it (then register the new key)")
    key = ec.generate_private_key(ec.SECP384R1())
    write_secret(path, key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b"\n")
    return pub
