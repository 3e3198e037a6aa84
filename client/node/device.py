"""`unikd edge --store DB --model-dir DIR`: the SuperNode of a device that runs `unikd serve`.

The node trains each round on the windows the service stored so far (node config `store-path`)
and installs the run's final student into the directory the service serves (`model-dir`). Both
paths are checked before anything starts: the store must be a window store, and its window shape
must be the service's (service.json, written by `unikd serve --model-dir`).

With `--data` as well, the SuperNode command is client/node/supernode.py's, plus these two keys;
without it (a device with no AdaTime folder) the same flags are assembled here.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from client.node.supernode import EdgeConfig, EdgeProcess, edge_env, supernode_command
from shared.errors import UnikdError
from shared.flower_tools import flwr_tool
from shared.processes import child_preexec


def check_device(store: Path, model_dir: Path | None) -> None:
    """A store `unikd serve` created, and (with a model dir) the same window shape in both."""
    from client.edge_service.store import store_shape
    from client.edge_service.versions import service_shape

    shape = store_shape(store)  # DataError naming the store when it is not one
    wanted = service_shape(model_dir) if model_dir is not None else None
    if wanted is not None and wanted != shape:
        raise UnikdError(f"--store {store} holds windows of shape {shape}, the service serving "
                         f"--model-dir {model_dir} takes {wanted}: not the same service")


def _quote(value: Path) -> str:
    return '"' + str(value).replace('"', '\\"') + '"'


def device_node_config(cfg: EdgeConfig, store: Path, model_dir: Path | None) -> str:
    keys = [f"partition-id={cfg.client_id}", f"store-path={_quote(store)}"]
    if model_dir is not None:
        keys.append(f"model-dir={_quote(model_dir)}")
    return " ".join(keys)


def device_command(cfg: EdgeConfig, store: Path, model_dir: Path | None,
                   with_data: bool) -> list[str]:
    store = Path(store).expanduser().resolve()
    model_dir = Path(model_dir).expanduser().resolve() if model_dir else None
    check_device(store, model_dir)
    extra = device_node_config(cfg, store, model_dir)
    if with_data:  # data-path (labelled test windows for evaluation), domain, partition-id
        cmd = supernode_command(cfg)
        i = cmd.index("--node-config") + 1
        cmd[i] = f"{cmd[i]} {extra.split(' ', 1)[1]}"
        return cmd
    if ":" not in cfg.superlink:
        raise UnikdError(f"--superlink {cfg.superlink!r}: give HOST:PORT")
    cmd = [flwr_tool("flower-supernode"), "--superlink", cfg.superlink,
           "--port", str(cfg.port), "--node-config", extra]
    if cfg.insecure:
        if cfg.key is not None:
            raise UnikdError("--key needs TLS: node authentication is refused without it")
        cmd.append("--insecure")
    else:
        if cfg.ca is None or not cfg.ca.is_file():
            raise UnikdError(f"--ca {cfg.ca}: the CA certificate (ca.crt) is required for TLS "
                             f"(or pass --insecure on a trusted lab network)")
        cmd += ["--root-certificates", str(cfg.ca)]
    if cfg.key is not None:
        if not cfg.key.is_file():
            raise UnikdError(f"--key {cfg.key}: not found")
        if cfg.key.stat().st_mode & 0o077:
            raise UnikdError(f"--key {cfg.key}: readable by others; chmod 600 it")
        cmd += ["--auth-supernode-private-key", str(cfg.key)]
    if cfg.max_retries is not None:
        cmd += ["--max-retries", str(cfg.max_retries)]
    if cfg.max_wait is not None:
        cmd += ["--max-wait-time", str(cfg.max_wait)]
    return cmd


def start_device(cfg: EdgeConfig, cmd: list[str], log_path: Path | None = None,
                 echo: bool = False) -> EdgeProcess:
    """Start `cmd` (device_command) as start_edge starts a SuperNode: own session, whole-group
    stop, output to `log_path` or echoed."""
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
        proc.pump = threading.Thread(target=echo_output, args=(proc,), daemon=True)
        proc.pump.start()
    return proc


def echo_output(proc: EdgeProcess) -> None:
    """Copy the node's output to stdout, keeping the last lines for `proc.outcome()`."""
    import sys

    for raw in proc.popen.stdout:  # type: ignore[union-attr]
        line = raw.decode(errors="replace")
        proc.lines.append(line.rstrip("\n"))
        sys.stdout.write(line)
        sys.stdout.flush()
