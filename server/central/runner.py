"""One centralized run end to end: data, teacher, student, scores, run folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from server.central.trainer import StudentResult, distill_unikd, score_student
from server.central.teacher import content_hash, load_teacher, save_teacher, train_teacher
from shared.config import RunConfig
from shared.data.scenario import ScenarioData, load_scenario
from shared.errors import UnikdError
from shared.unikd.compute import describe
from shared.unikd.evaluation import evaluate
from shared.protocol import checkpoints
from shared.platform.runs import append_jsonl, make_run_dir, plot_curves, write_csv, write_json

log = logging.getLogger(__name__)

Method = Callable[[RunConfig, ScenarioData, nn.Module, bool], StudentResult]


def methods() -> dict[str, Method]:
    """UNI-KD plus the baseline students (spec §6), all on the same student backbone."""
    from server.central.baselines import BASELINES

    return {"unikd": lambda cfg, data, teacher, progress: distill_unikd(cfg, data, teacher, progress),
            **BASELINES}


def get_method(name: str) -> Method:
    if name == "unikd":
        return lambda cfg, data, teacher, progress: distill_unikd(cfg, data, teacher, progress)
    table = methods()
    if name not in table:
        raise UnikdError(f"unknown method '{name}'; known: {', '.join(table)}")
    return table[name]


def obtain_teacher(cfg: RunConfig, data: ScenarioData, progress: bool = True,
                   save_to: Path | None = None) -> tuple[nn.Module, dict]:
    """Load `teacher.checkpoint`, or train a DANN teacher (and save it when asked)."""
    if cfg.teacher.checkpoint:
        teacher, meta = load_teacher(cfg.teacher.checkpoint, data.spec)
        if meta.get("scenario") not in (None, data.name):
            log.warning("teacher %s was trained for %s, not %s", cfg.teacher.checkpoint,
                        meta.get("scenario"), data.name)
        return teacher, meta
    start, history = time.perf_counter(), []
    teacher = train_teacher(cfg, data, progress, history)
    meta = {"train_seconds": time.perf_counter() - start, "history": history,
            "trg_mf1": evaluate(teacher, data.trg_test, data.spec.classes)["mf1"],
            "src_mf1": evaluate(teacher, data.src_test, data.spec.classes)["mf1"],
            "content_hash": content_hash(teacher)}
    if save_to is not None:
        save_teacher(save_to, teacher, cfg, data, {k: meta[k] for k in ("trg_mf1", "src_mf1")})
    return teacher, meta


def run_teacher(cfg: RunConfig, progress: bool = True) -> Path:
    """`unikd teacher`: train and save a DANN teacher in a new run folder."""
    device = describe(cfg.device)  # `cuda` without one stops here, before any folder or data
    log.info("device: %s", device)
    data = load_scenario(cfg.data)
    run_dir = make_run_dir(cfg.out, f"teacher-{data.spec.name}-{data.source}to{data.target}")
    cfg.dump(run_dir / "config.yaml")
    teacher, meta = obtain_teacher(cfg, data, progress, save_to=run_dir / "teacher.pt")
    write_csv(run_dir / "metrics.csv", meta["history"])
    plot_curves(run_dir / "curves.png", meta["history"], "epoch", ["teacher_ce", "teacher_dom"],
                f"DANN teacher {data.name}")
    write_json(run_dir / "results.json", {**{k: v for k, v in meta.items() if k != "history"},
                                          "device": device})
    log.info("teacher %s: target MF1 %.2f (source %.2f) in %.1fs -> %s", data.name,
             meta["trg_mf1"], meta["src_mf1"], meta["train_seconds"], run_dir / "teacher.pt")
    return run_dir


def run_distill(cfg: RunConfig, method: str, progress: bool = True) -> Path:
    """`unikd distill`: a student by `method`, written to a run folder a person can open."""
    fn = get_method(method)
    device = describe(cfg.device)  # `cuda` without one stops here, before any folder or data
    log.info("device: %s", device)
    data = load_scenario(cfg.data)
    run_dir = make_run_dir(cfg.out, f"{method}-{data.spec.name}-{data.source}to{data.target}")
    cfg.distill.method = method
    cfg.dump(run_dir / "config.yaml")
    teacher, t_meta = obtain_teacher(cfg, data, progress, save_to=run_dir / "teacher.pt")
    result = fn(cfg, data, teacher, progress)
    scores = score_student(result.student, data)
    for row in result.history:
        append_jsonl(run_dir / "metrics.jsonl", row)
    write_csv(run_dir / "metrics.csv", result.history)
    plot_curves(run_dir / "curves.png", result.history, "epoch",
                ["src_loss", "trg_loss", "src_ce", "src_kd", "trg_kd", "src_hint", "trg_dom",
                 "trg_w_mean", "loss"], f"{method} {data.name}")
    checkpoints.save(run_dir / "student.pt", checkpoints.CENTRAL_STUDENT, {
                                        "state_dict": result.student.state_dict(),
                                        "norm": {"mean": data.normalizer.mean,
                                                 "std": data.normalizer.std},
                                        "spec": data.spec.to_dict(),
                                        "meta": {"dataset": data.spec.name, "scenario": data.name,
                                                 "method": method, "seed": cfg.seed,
                                                 "config_hash": cfg.hash()}})
    results = {"method": method, "dataset": data.spec.name, "scenario": data.name,
               "seed": cfg.seed, **scores, "train_seconds": result.train_seconds,
               "teacher_mf1": t_meta.get("trg_mf1"), "config_hash": cfg.hash(), "device": device}
    write_json(run_dir / "results.json", results)
    log.info("%s %s seed %d: target MF1 %.2f acc %.2f (teacher %.2f) -> %s", method, data.name,
             cfg.seed, scores["mf1"], scores["acc"], t_meta.get("trg_mf1") or float("nan"), run_dir)
    return run_dir
