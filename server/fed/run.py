"""A federated run end to end: choose the Grid, run the rounds, write the run folder."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from server.fed.harness import InProcessGrid, load_component
from server.fed.live_status import End, LiveStatus
from server.fed.rounds import FedResult, federate
from server.fed.run_folder import open_run_dir, write_fed_run
from server.fed.worker_grid import WorkerGrid, resolve_workers
from shared.config import RunConfig
from shared.unikd.compute import resolve_device
from shared.platform.flower_tools import FLWR_ENV

log = logging.getLogger(__name__)
CLIENT_APP = "client.node.client_app:app"  # the [tool.flwr.app.components] clientapp reference


def run_inprocess(cfg: RunConfig, progress: bool = True, run_dir: Path | None = None,
                  resume: Path | None = None) -> FedResult:
    """The simulation in this process, its clients in `fed.workers` worker processes (server/fed/
    worker_grid.py) or, at one worker, one after another here: the same results either way."""
    workers = resolve_workers(cfg.fed)
    if workers <= 1:
        grid = InProcessGrid(load_component(CLIENT_APP), cfg.fed.clients)
        return federate(grid, cfg, progress=progress, run_dir=run_dir, resume=resume)
    log.info("simulating %d clients in %d processes (this one and %d workers)", cfg.fed.clients,
             workers, workers - 1)
    with WorkerGrid(CLIENT_APP, cfg.fed.clients, workers) as grid:
        return federate(grid, cfg, progress=progress, run_dir=run_dir, resume=resume)


def run_ray(cfg: RunConfig, run_dir: Path, progress: bool = False,
            resume: Path | None = None) -> FedResult:
    """Flower's simulation engine (Ray) with N SuperNodes and the same two apps."""
    for key, value in FLWR_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Ray renices its worker processes to 15 (ray_config_def.h `worker_niceness`), so on a busy
    # machine every other process starves the ClientApps: measured on 2 cores beside 4 busy
    # processes, the first query waited 309 s and a round 2-4 s, against 63 s and 0.3-1 s at 0.
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="unikd-flwr-"))
    import ray
    from flwr.simulation import run_simulation

    from server.fed.server_app import make_server_app

    device = resolve_device(cfg.device).type
    if device != "cpu":  # Flower's SuperNodes read the default node config: `device` cpu
        log.info("fed.engine=ray: the cloud computes on %s, the simulated clients on the CPU (the "
                 "engine gives them no GPU and no node config of ours)", device)
    box: dict = {}
    for attempt in (1, 2):  # Ray's node start-up can time out on a busy 2-core machine
        try:
            run_simulation(
                server_app=make_server_app(cfg, box, progress, run_dir, resume),
                client_app=load_component(CLIENT_APP), num_supernodes=cfg.fed.clients,
                backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                "init_args": {"num_cpus": max(1, os.cpu_count() or 1),
                                              "logging_level": "ERROR"}})
            break
        except RuntimeError as exc:
            ray.shutdown()
            if attempt == 2 or "result" in box:
                raise
            log.warning("Flower's simulation runtime failed (%s); starting it once more", exc)
            box.clear()
    if "error" in box:
        raise box["error"]
    if "result" not in box:
        from shared.errors import UnikdError

        raise UnikdError("the simulation ended without a result; see the log above")
    return box["result"]


def run_federate(cfg: RunConfig, progress: bool = True, resume: Path | None = None) -> Path:
    """A new run folder, or (with `resume`) the interrupted run's own folder, continued."""
    resolve_device(cfg.device)  # `device: cuda` without CUDA stops here, before any folder
    run_dir = open_run_dir(cfg, resume)
    start = time.perf_counter()
    result = (run_ray(cfg, run_dir, progress, resume) if cfg.fed.engine == "ray"
              else run_inprocess(cfg, progress, run_dir, resume))
    summary = write_fed_run(run_dir, cfg, result)
    LiveStatus(run_dir).write(End("completed"))
    log.info("federated %s: target MF1 %.2f after %d rounds, %.1f MB moved, %d updates rejected, "
             "%.1fs -> %s", cfg.data.scenario, summary["mf1"] or float("nan"), summary["rounds"],
             (summary["bytes_up"] + summary["bytes_down"]) / 1e6, summary["rejected_updates"],
             time.perf_counter() - start, run_dir)
    return run_dir
