"""A federated run end to end: choose the Grid, run the rounds, write the run folder."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from server.harness import InProcessGrid, load_component
from server.privacy import write_privacy_ledger
from server.rounds import FedResult, federate
from server.teacher import teacher_state
from shared.config import RunConfig
from shared.records import student_state
from shared.runs import make_run_dir, plot_curves, save_torch, write_csv, write_json

log = logging.getLogger(__name__)
CLIENT_APP = "client.client_app:app"  # the [tool.flwr.app.components] clientapp reference


def write_fed_run(run_dir: Path, cfg: RunConfig, result: FedResult) -> dict:
    cloud = result.cloud
    write_csv(run_dir / "rounds.csv", result.rounds)
    write_csv(run_dir / "evals.csv", result.evals)
    write_csv(run_dir / "ledger.csv", result.ledger.rows)
    plot_curves(run_dir / "mf1_vs_rounds.png", result.evals, "round", ["mf1", "acc"],
                "federated target MF1")
    plot_curves(run_dir / "mf1_vs_mb.png", result.evals, "mb_total", ["mf1"],
                "target MF1 vs MB transferred")
    plot_curves(run_dir / "losses.png", result.rounds, "round",
                ["src_loss", "trg_loss", "trg_kd", "trg_hint", "trg_dom", "trg_w_mean"],
                "per-round losses")
    save_torch(run_dir / "checkpoints" / "teacher.pt", {
        "members": teacher_state(cloud.teacher), "content_hash": cloud.teacher_hash})
    save_torch(run_dir / "checkpoints" / "final.pt", {
        "student": student_state(cloud.nets), "d_f": cloud.nets.d_f.state_dict(),
        "d_d": cloud.nets.d_d.state_dict(),
        "norm": {"mean": cloud.source.normalizer.mean, "std": cloud.source.normalizer.std},
        "optimizers": {k: o.state_dict() for k, o in cloud.opts.items()},
        "round": len(result.rounds), "config_hash": cfg.hash(), "teacher_hash": cloud.teacher_hash})
    rounds = len(result.rounds)
    up = [r["bytes_up_per_client"] for r in result.rounds]
    down = [r["bytes_down_per_client"] for r in result.rounds]
    summary = {"scenario": cfg.data.scenario, "seed": cfg.seed, "clients": cfg.fed.clients,
               "rounds": rounds, **{k: result.final.get(k) for k in ("mf1", "acc")},
               "bytes_up": sum(r["bytes_up"] for r in result.rounds),
               "bytes_down": sum(r["bytes_down"] for r in result.rounds),
               "bytes_up_per_client_round_median": sorted(up)[len(up) // 2] if up else 0,
               "bytes_down_per_client_round_median": sorted(down)[len(down) // 2] if down else 0,
               "rejected_updates": len(result.rejected), "wall_seconds": result.wall_seconds,
               "teacher_placement": cfg.fed.teacher_placement, "teacher_hash": cloud.teacher_hash}
    summary.update(write_privacy_ledger(run_dir, cfg, result))  # privacy.csv: epsilon per round
    write_json(run_dir / "results.json", summary)
    return summary


def run_inprocess(cfg: RunConfig, progress: bool = True, run_dir: Path | None = None,
                  resume: Path | None = None) -> FedResult:
    grid = InProcessGrid(load_component(CLIENT_APP), cfg.fed.clients)
    return federate(grid, cfg, progress=progress, run_dir=run_dir, resume=resume)


def run_ray(cfg: RunConfig, run_dir: Path, progress: bool = False,
            resume: Path | None = None) -> FedResult:
    """Flower's simulation engine (Ray) with N SuperNodes and the same two apps."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="unikd-flwr-"))
    import ray
    from flwr.simulation import run_simulation

    from server.server_app import make_server_app

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
    if resume is not None:
        run_dir = Path(resume)
    else:
        run_dir = make_run_dir(cfg.out, f"federate-{cfg.data.dataset}-{cfg.fed.clients}clients")
        cfg.dump(run_dir / "config.yaml")
    start = time.perf_counter()
    result = (run_ray(cfg, run_dir, progress, resume) if cfg.fed.engine == "ray"
              else run_inprocess(cfg, progress, run_dir, resume))
    summary = write_fed_run(run_dir, cfg, result)
    log.info("federated %s: target MF1 %.2f after %d rounds, %.1f MB moved, %d updates rejected, "
             "%.1fs -> %s", cfg.data.scenario, summary["mf1"] or float("nan"), summary["rounds"],
             (summary["bytes_up"] + summary["bytes_down"]) / 1e6, summary["rejected_updates"],
             time.perf_counter() - start, run_dir)
    return run_dir
