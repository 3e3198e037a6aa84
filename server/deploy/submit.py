"""`unikd submit`: run the FedUNI-KD app on a running cloud, wait for it, fetch its run folder.

The ServerApp writes its run folder under `runs/submit-<token>/` of the cloud's state dir (its
working directory); on the cloud machine (or one sharing its volume) that folder is copied into
the local output folder, and the run's log and status are saved everywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from server.deploy.flwr_cli import FlwrCli
from shared.errors import UnikdError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]  # server/deploy/ -> the repo
FINISHED = "finished:"
RESUME_KEY = "resume"  # run-config key: a run folder on the cloud to continue


def app_dir(path: Path | None = None) -> Path:
    """The Flower app to submit: a folder whose pyproject.toml has [tool.flwr.app]."""
    d = Path(path).resolve() if path else REPO_ROOT
    pp = d / "pyproject.toml"
    if not pp.is_file() or "flwr" not in tomllib.loads(pp.read_text()).get("tool", {}):
        raise UnikdError(f"{d}: no pyproject.toml with [tool.flwr.app]; pass --app DIR")
    return d


def app_config_keys(app: Path) -> set[str]:
    """The run-config keys the app declares ([tool.flwr.app.config]): all a run may set."""
    data = tomllib.loads((app / "pyproject.toml").read_text())
    return set(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


@dataclass
class SubmitResult:
    """A submitted run: its id, final status, wall time and where its folder is."""

    run_id: int
    status: str
    seconds: float
    run_dir: Path | None = None
    remote_dir: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether the run completed."""
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
