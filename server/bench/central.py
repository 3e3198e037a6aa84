"""`unikd bench central`: methods × scenarios × seeds on one dataset, with a Markdown report.

Phase 1 trains one teacher per (scenario, seed) and caches it under OUT/teachers. Phase 2 runs
every method in a fresh process, so `peak_rss_mb` is that run's own peak. Target labels are
used for nothing but the final score.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from shared.config import RunConfig, load_config
from shared.data.datasets import DatasetSpec, parse_scenario
from shared.platform.runs import write_json

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def scenario_cfg(base: dict, scenario: str, seed: int, out: Path,
                 extra: tuple[str, ...] = ()) -> RunConfig:
    """One worker's config: the bench's file and overrides, then this scenario and seed."""
    cfg = load_config(base["file"], [*base["overrides"], f"data.scenario={scenario}",
                                     f"seed={seed}", *extra])
    cfg.out = str(out)
    return cfg


def teacher_path(out: Path, scenario: str, seed: int) -> Path:
    src, trg = parse_scenario(scenario)
    return out / "teachers" / f"{src}to{trg.replace(',', '+')}_seed{seed}.pt"


def _teacher_task(base: dict, scenario: str, seed: int, out: str) -> dict:
    import torch

    from server.central.runner import obtain_teacher
    from shared.data.scenario import load_scenario

    cfg = scenario_cfg(base, scenario, seed, Path(out))
    torch.set_num_threads(cfg.threads)
    path = teacher_path(Path(out), scenario, seed)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_scenario(cfg.data)
    _, meta = obtain_teacher(cfg, data, progress=False, save_to=path)
    row = {"scenario": data.name, "seed": seed, "mf1": meta["trg_mf1"], "src_mf1": meta["src_mf1"],
           "train_seconds": meta["train_seconds"], "peak_rss_mb": peak_rss_mb()}
    write_json(meta_path, row)
    return row


def _method_task(base: dict, method: str, scenario: str, seed: int, out: str) -> dict:
    import torch

    from server.central.trainer import score_student
    from server.central.runner import get_method
    from server.central.teacher import load_teacher
    from shared.data.scenario import load_scenario

    cfg = scenario_cfg(base, scenario, seed, Path(out))
    torch.set_num_threads(cfg.threads)
    data = load_scenario(cfg.data)
    teacher, _ = load_teacher(teacher_path(Path(out), scenario, seed), data.spec)
    track: dict = {}
    if method == "unikd":  # evaluated every epoch (the reported student and the probes)
        from server.central.trainer import distill_unikd

        result = distill_unikd(cfg, data, teacher, False, **epoch_tracking(
            data, teacher, track, base.get("ema_probes") or ()))
    else:
        result = get_method(method)(cfg, data, teacher, False)
    scores = score_student(result.student, data)
    return {"method": base.get("label") or method, "scenario": data.name, "seed": seed, "mf1": scores["mf1"],
            "acc": scores["acc"], "src_mf1": scores["src_mf1"],
            "train_seconds": result.train_seconds, "peak_rss_mb": peak_rss_mb(), **track}


LAST_EVALS = 5  # the spread of a run's final student: std over its last 5 evaluations


def last_std(values: list[float], n: int = LAST_EVALS) -> float | None:
    """Sample std (n-1) of the last `n` values; None with fewer than 2."""
    tail = values[-n:]
    return statistics.stdev(tail) if len(tail) > 1 else None


def epoch_tracking(data, teacher, track: dict, probe_decays) -> dict:
    """`distill_unikd`'s hooks for the bench: the reported student's target-test MF1 at every
    epoch's end (`mf1_by_epoch`, `mf1_last5_std`), and for the probes (the live student and an
    EMA per decay in `probe_decays`) their MF1 per epoch and their agreement with the teacher's
    arg-max on the unlabelled target *train* windows (`agree_by_epoch`): a label-free score a
    run could choose its final checkpoint by. The target labels only score."""
    from shared.unikd.engine import teacher_outputs
    from shared.unikd.evaluation import evaluate, predict

    classes = data.spec.classes
    t_pred = teacher_outputs(teacher, data.trg_train.x).logits.argmax(1).cpu()  # as `predict`
    track.update(mf1_by_epoch=[], probes={}, agree_by_epoch={})

    def on_epoch(epoch: int, student) -> None:
        track["mf1_by_epoch"].append(evaluate(student, data.trg_test, classes)["mf1"])
        track["mf1_last5_std"] = last_std(track["mf1_by_epoch"])

    def on_probe(epoch: int, students: dict) -> None:
        for name, student in students.items():
            track["probes"].setdefault(name, []).append(
                evaluate(student, data.trg_test, classes)["mf1"])
            agree = (predict(student, data.trg_train.x) == t_pred).float().mean().item()
            track["agree_by_epoch"].setdefault(name, []).append(agree)

    return {"epoch_hook": on_epoch, "probe_decays": tuple(probe_decays), "probe_hook": on_probe}


def run_bench(base: dict, spec: DatasetSpec, methods: list[str], scenarios: list[str],
              seeds: list[int], out: Path, jobs: int = 1) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ctx = get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        futs = [pool.submit(_teacher_task, base, sc, sd, str(out)) for sc in scenarios for sd in seeds]
        teachers = [f.result() for f in futs]
        log.info("teachers done: mean target MF1 %.2f", statistics.mean(t["mf1"] for t in teachers))
        futs = [pool.submit(_method_task, base, m, sc, sd, str(out))
                for m in methods for sc in scenarios for sd in seeds]
        runs = []
        for f in futs:
            runs.append(f.result())
            r = runs[-1]
            log.info("%-12s %-7s seed %d: MF1 %6.2f (%.1fs)", r["method"], r["scenario"], r["seed"],
                     r["mf1"], r["train_seconds"])
    from shared.cli.commands.info import model_info

    runs = merge_previous(out / "results.json", runs)
    report = {"dataset": spec.name, "runs": runs, "teachers": teachers,
              "compression": model_info(spec), "wall_seconds": time.perf_counter() - start,
              "config": base}
    write_json(out / "results.json", report)
    (out / "results.md").write_text(markdown_report(report, spec))
    return report


def merge_previous(path: Path, runs: list[dict]) -> list[dict]:
    """Keep earlier runs of other (method, scenario, seed) keys, so methods can be added later."""
    if not path.exists():
        return runs
    key = lambda r: (r["method"], r["scenario"], r["seed"])  # noqa: E731
    fresh = {key(r) for r in runs}
    kept = [r for r in json.loads(path.read_text()).get("runs", []) if key(r) not in fresh]
    return kept + runs


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def _mean(values: list[float]) -> str:
    """A table cell: the mean, or '–' when there is nothing to average (e.g. a scenario list
    holding none of the dataset's main scenarios)."""
    return f"{statistics.mean(values):.2f}" if values else "–"


def _exchanges(runs: list[dict]) -> str:
    """Mean message exchanges per run ('–' where the runs did not count them)."""
    counts = [r["exchanges"] for r in runs if r.get("exchanges") is not None]
    return f"{statistics.mean(counts):.0f}" if counts else "–"


def _spread(runs: list[dict]) -> str:
    """Mean over runs of each run's std over its last 5 evaluations ('–' where not tracked)."""
    stds = [r["mf1_last5_std"] for r in runs if r.get("mf1_last5_std") is not None]
    return f"{statistics.mean(stds):.2f}" if stds else "–"


def markdown_report(report: dict, spec: DatasetSpec, with_teacher: bool = True) -> str:
    """Per-scenario mean ± std over seeds; 10-scenario and main-5 means of the scenario means."""
    runs, teachers = report["runs"], report["teachers"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in teachers))
    methods = list(dict.fromkeys(r["method"] for r in runs))
    main = {f"{a}->{b}" for a, b in spec.main_scenarios}
    rows = [("teacher (DANN)", teachers)] * with_teacher + [
        (m, [r for r in runs if r["method"] == m]) for m in methods]
    exchanges = any("exchanges" in r for r in runs)  # federated runs: round trips per run
    spread = any(r.get("mf1_last5_std") is not None for r in runs)  # evaluated every epoch/eval
    head = ("| method | " + " | ".join(scenarios) + " | mean | main-5 mean | s/run |"
            + " exchanges/run |" * exchanges + " last-5 std |" * spread)
    lines = [head, "|" + "---|" * (len(scenarios) + 4 + exchanges + spread)]
    for name, rs in rows:
        per = {sc: [r["mf1"] for r in rs if r["scenario"] == sc] for sc in scenarios}
        means = {sc: statistics.mean(v) for sc, v in per.items() if v}
        main_means = [v for sc, v in means.items() if sc in main]
        secs = statistics.mean(r["train_seconds"] for r in rs) if rs else math.nan
        lines.append(f"| {name} | " + " | ".join(_mean_std(per[sc]) for sc in scenarios)
                     + f" | {_mean(list(means.values()))} | {_mean(main_means)} | {secs:.1f} |"
                     + f" {_exchanges(rs)} |" * exchanges + f" {_spread(rs)} |" * spread)
    c = report["compression"]
    lines += ["", f"MF1 (%) on the target test split, mean ± std over seeds; final-epoch students"
              f"{' (last-5 std: mean over runs of the sample std of its last 5 evaluations)' * spread}. "
              f"Teacher {c['teacher']['params']:,} params / {c['teacher']['macs'] / 1e6:.2f} M MACs, "
              f"student {c['student']['params']:,} / {c['student']['macs'] / 1e6:.3f} M "
              f"({c['compression']['params']}x params, {c['compression']['macs']}x MACs). "
              f"Wall time {report['wall_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"
