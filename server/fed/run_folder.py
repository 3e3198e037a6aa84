"""A federated run's folder: opened (or re-opened to resume) and written when the rounds end.

Both launchers use it: `unikd federate` (server.fed.run) and a deployed ServerApp
(server.fed.server_app).
"""

from __future__ import annotations

import json
from pathlib import Path

from server.fed.dp.report import write_privacy_ledger
from server.fed.rounds import FedResult
from shared.config import RunConfig, load_config
from shared.errors import UnikdError
from shared.unikd.compute import describe
from shared.unikd.metrics import median
from shared.protocol import checkpoints
from shared.protocol.checkpoints import teacher_state
from shared.protocol.records import student_state
from shared.platform.runs import make_run_dir, plot_curves, write_csv, write_json


def open_run_dir(cfg: RunConfig, resume: Path | None) -> Path:
    """A new run folder holding the resolved config, or the interrupted run's own folder."""
    if resume is not None:
        return Path(resume)
    run_dir = make_run_dir(cfg.out, f"federate-{cfg.data.dataset}-{cfg.fed.clients}clients")
    cfg.dump(run_dir / "config.yaml")
    return run_dir


def resume_dir(resume: str, runs_root: Path) -> Path:
    """The run folder a deployed run may continue: inside the cloud's own runs folder only,
    so a submitted run config cannot make the ServerApp read files elsewhere on the host."""
    root = Path(runs_root).resolve()
    path = Path(resume)
    target = (path if path.is_absolute() else root.parent / path).resolve()
    if target != root and root not in target.parents:
        raise UnikdError(f"resume: {resume} is outside the cloud's runs folder {root}; "
                         f"a resumed run must be one of this cloud's run folders")
    if not (target / "config.yaml").is_file():
        raise UnikdError(f"resume: {target} holds no config.yaml; not a run folder")
    return target


def resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """A resumed run continues under its own resolved config."""
    return load_config(Path(run_dir) / "config.yaml", overrides)


def write_fed_run(run_dir: Path, cfg: RunConfig, result: FedResult) -> dict:
    cloud = result.cloud
    write_csv(run_dir / "rounds.csv", result.rounds)
    write_csv(run_dir / "evals.csv", result.evals)
    write_csv(run_dir / "ledger.csv", result.ledger.rows)
    if result.cohorts:  # cross-device: each round's cohort and who of it answered
        (run_dir / "cohorts.jsonl").write_text(
            "".join(json.dumps(c) + "\n" for c in result.cohorts))
    plot_curves(run_dir / "mf1_vs_rounds.png", result.evals, "round", ["mf1", "acc"],
                "federated target MF1")
    plot_curves(run_dir / "mf1_vs_mb.png", result.evals, "mb_total", ["mf1"],
                "target MF1 vs MB transferred")
    plot_curves(run_dir / "mf1_vs_exchanges.png", result.evals, "exchanges", ["mf1"],
                "target MF1 vs message exchanges (round trips)")
    plot_curves(run_dir / "losses.png", result.rounds, "round",
                ["src_loss", "trg_loss", "trg_kd", "trg_hint", "trg_dom", "trg_w_mean"],
                "per-round losses")
    checkpoints.save(run_dir / "checkpoints" / "teacher.pt", checkpoints.TEACHER, {
        "members": teacher_state(cloud.teacher),
        "meta": {"dataset": cloud.source.spec.name, "scenario": cfg.data.scenario,
                 "seed": cfg.seed, "config_hash": cfg.hash(), "content_hash": cloud.teacher_hash}})
    # the final student is the reported one (the EMA when distill.ema_decay > 0); the weights
    # training ended on go beside it then, as `live_student`, matching the optimizers' moments
    live = ({"live_student": student_state(cloud.nets)} if cloud.ema is not None else {})
    checkpoints.save(run_dir / "checkpoints" / "final.pt", checkpoints.FED_FINAL, {
        "student": student_state(cloud.reported_nets()), **live,
        "d_f": cloud.nets.d_f.state_dict(),
        "d_d": cloud.nets.d_d.state_dict(),
        "norm": {"mean": cloud.source.normalizer.mean, "std": cloud.source.normalizer.std},
        "optimizers": {k: o.state_dict() for k, o in cloud.opts.items()},
        "round": len(result.rounds), "config_hash": cfg.hash(), "teacher_hash": cloud.teacher_hash,
        "spec": cloud.source.spec.to_dict()})
    rounds = len(result.rounds)
    up = [r["bytes_up_per_client"] for r in result.rounds]
    down = [r["bytes_down_per_client"] for r in result.rounds]
    summary = {"scenario": cfg.data.scenario, "seed": cfg.seed, "clients": cfg.fed.clients,
               "rounds": rounds, "exchanges": result.exchanges,
               **{k: result.final.get(k) for k in ("mf1", "acc")},
               "bytes_up": sum(r["bytes_up"] for r in result.rounds),
               "bytes_down": sum(r["bytes_down"] for r in result.rounds),
               "bytes_up_per_client_round_median": median(up) if up else 0,
               "bytes_down_per_client_round_median": median(down) if down else 0,
               "rejected_updates": len(result.rejected), "wall_seconds": result.wall_seconds,
               "teacher_placement": cfg.fed.teacher_placement, "teacher_hash": cloud.teacher_hash,
               "device": describe(cfg.device)}
    summary.update(write_privacy_ledger(run_dir, cfg, result))  # privacy.csv: epsilon per round
    write_json(run_dir / "results.json", summary)
    return summary
