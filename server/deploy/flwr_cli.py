"""The `flwr` CLI and the Control API against one SuperLink: nodes, runs, logs, signed starts.

The Control API (submit runs, register and list nodes) is on the SuperLink's loopback port and
not authenticated in open-source Flower 1.42: operators reach it on the cloud itself or through
an SSH tunnel. The calls a deployment repeats go through Flower's own Control API client in this
process (control_internals.py); only `flwr stop` and the run-following `flwr log --stream` start
a `flwr` process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
from pathlib import Path

from server.deploy import control_internals
from shared.errors import UnikdError
from shared.platform import flower_pins
from shared.platform.flower_tools import flwr_env, flwr_tool

log = logging.getLogger(__name__)

CONNECTION = "unikd"  # connection name in the private flwr CLI config


class FlwrCli:
    """The `flwr` CLI against one SuperLink, with a private FLWR_HOME holding its connection."""

    def __init__(self, address: str, ca: Path | None, home: Path | None = None,
                 sign_key: Path | None = None, signature: Path | None = None):
        """Write the connection into `home` (a fresh temporary folder by default)."""
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
        """`call(client)` on the in-process Control API client (`control_internals`): the
        status calls a deployment repeats (node lists, run status) without a `flwr` process
        each. Any failure is a UnikdError naming `what`; the client is rebuilt next time."""
        try:
            if self._control is None:
                flower_pins.check()
                self._control = control_internals.control_client(self.address, self.ca,
                                                                 self.home)
            return call(self._control)
        except UnikdError:
            raise
        except Exception as err:  # unreachable, TLS, a SuperLink restarting, refused
            self.close()
            raise UnikdError(f"{what} at {self.address} failed: "
                             f"{control_internals.control_error(err)}") from None

    def close(self) -> None:
        """Close the in-process Control API client, if one is open."""
        if self._control is not None:
            try:
                self._control.close()
            finally:
                self._control = None

    def run(self, args: list[str], timeout: float = 120.0, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """`flwr ARGS...` as a process; with `check`, a failure is a UnikdError."""
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
        return self.control(f"registering {public_key}",
                            lambda c: control_internals.register_node(c, public_key,
                                                                      name or None))

    def nodes(self) -> list[dict]:
        """Every registered node: node-id, owner-name, status (as `flwr supernode list`)."""
        return self.control("listing the nodes", control_internals.list_nodes)

    def node_states(self) -> list[dict]:
        """Every registered node's liveness: status, online-until, heartbeat-interval, ...
        (control_internals.node_states)."""
        return self.control("reading the nodes' state", control_internals.node_states)

    def online_nodes(self) -> list[dict]:
        """The registered nodes whose status is online."""
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
        from shared.platform.app_signing import RUN_CONFIG_KEY

        flower_pins.check()
        fab = control_internals.fab_bytes(app)
        signature = self.app_signature(hashlib.sha256(fab).hexdigest(), app)
        if signature is not None:
            run_config = {**run_config, RUN_CONFIG_KEY: signature}
        values = {k: str(v) for k, v in run_config.items()}
        return self.control("starting the run",
                            lambda c: control_internals.start_run(c, fab, values))

    def run_info(self, run_id: int) -> dict:
        """run-id, status ('finished:completed', ...) and status-details (as `flwr ls`)."""
        info = self.control(f"reading run {run_id}'s status",
                            lambda c: control_internals.run_status(c, run_id))
        if info is None:
            raise UnikdError(f"run {run_id} not found on {self.address}")
        return info

    def status(self, run_id: int) -> str:
        """The run's status, e.g. 'running' or 'finished:completed'."""
        return str(self.run_info(run_id).get("status", ""))

    def follow(self, run_id: int, timeout: float) -> None:
        """One `flwr log RUN --stream`: returns when the run has finished (the SuperLink ends
        the stream then) or the connection broke; raises TimeoutExpired after `timeout`."""
        subprocess.run([flwr_tool("flwr"), "log", str(run_id), CONNECTION, "--stream"],
                       env=flwr_env(self.home), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=timeout)

    def logs(self, run_id: int) -> str:
        """The run's log (`flwr log RUN --show`); empty when the cloud cannot be read."""
        try:
            return self.control(f"reading run {run_id}'s log",
                                lambda c: control_internals.run_logs(c, run_id))
        except UnikdError as err:
            log.warning("%s", err)
            return ""

    def stop_run(self, run_id: int) -> None:
        """`flwr stop RUN`; a failure is ignored (the run may have finished already)."""
        self.run(["stop", str(run_id), CONNECTION], check=False)


def _last_lines(text: str, n: int = 8) -> str:
    """The last `n` lines of a process's output, on one line."""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


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
