"""`unikd bench federated`: the same table as `bench central`, from simulated federations.

Each (scenario, seed) runs in a fresh process with the in-process Grid. `results.json` has the
central format plus `rounds`, `bytes_up` and `bytes_down` (all clients, whole run), so the two
benchmarks compare line by line.
"""

from __future__ import annotations

import copy
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from server.bench.central import (last_std, markdown_report, merge_previous, peak_rss_mb,
                                  scenario_cfg, teacher_path)
from shared.config import RunConfig
from shared.data.datasets import DatasetSpec, parse_scenario, scenario_targets
from shared.errors import UnikdError
from shared.unikd.metrics import median
from shared.data.partition import PartitionSpec, client_domains
from shared.platform.runs import write_json

DEFAULT_CLIENTS = 5

log = logging.getLogger(__name__)


def clients_per_scenario(scenarios: list[str], partition: str, clients: int | None
                         ) -> dict[str, int]:
    """Edges per scenario. `per-domain` gives each target domain of a scenario its own edge
    (2->11+13+16: three edges), so the count follows the scenario; `--clients`, if given, must
    agree. iid and dirichlet split the target's windows over `clients` (default 5) edges; with
    several targets (2->11+13+16) they split the pooled windows of all of them."""
    spec = PartitionSpec.parse(partition)
    kind = spec.kind
    out: dict[str, int] = {}
    for sc in scenarios:
        target = parse_scenario(sc)[1]
        targets = scenario_targets(target)
        if kind == "per-domain":
            if clients is not None and clients != len(targets):
                raise UnikdError(f"--partition per-domain: scenario {sc} has {len(targets)} "
                                 f"target domain(s), one per edge, but --clients is {clients}")
            out[sc] = len(targets)
        else:
            out[sc] = DEFAULT_CLIENTS if clients is None else clients
        client_domains(target, out[sc], spec)  # the partitioner's own checks, before any work
    return out


def fed_teacher_key(cfg: RunConfig) -> str:
    """What a federated DANN teacher depends on: the whole config but the run's output folder,
    a teacher checkpoint and the teacher placement, where `edge` and `cloud` train the same
    teacher (the placement decides where it runs afterwards), and the student's EMA decay, which
    only averages the student after the teacher is trained. Conservative: any other
    difference, distillation settings included, trains a teacher of its own."""
    key = copy.deepcopy(cfg)
    key.out, key.teacher.checkpoint, key.distill.ema_decay = "", "", 0.0
    if key.fed.teacher_placement in ("edge", "cloud"):
        key.fed.teacher_placement = "edge"
    # the student's local steps and server step reach the teacher only through its own (both
    # mode: fed.teacher_steps, fed.teacher_step_rule); edge mode trains it one step per exchange
    f, both = key.fed, key.fed.local_steps_mode == "both"
    f.teacher_local_steps, f.teacher_server_step = ((f.teacher_steps, f.teacher_step_rule) if both
                                                    else (0, "same"))
    f.local_steps, f.server_step = 1, "sqrt-lr"
    f.evaluation = "piggyback"  # when the student is scored does not touch the teacher
    return key.hash()


def fed_teacher_path(out: Path, cfg: RunConfig, scenario: str, seed: int) -> Path:
    """OUT/fed-teachers/<fed_teacher_key>/<scenario>_seed<seed>.pt (`--cache-teachers`)."""
    return out / "fed-teachers" / fed_teacher_key(cfg) / teacher_path(Path(), scenario, seed).name


def check_teacher_cache(cfg: RunConfig) -> None:
    if cfg.fed.dp != "off":
        raise UnikdError("--cache-teachers with fed.dp: the privacy ledger must charge the "
                         "teacher's rounds in every run; train each run's teacher instead")


def save_fed_teacher(path: Path, teacher, cfg: RunConfig, scenario: str) -> None:
    """The teacher a federation pre-trained, in the format `teacher.checkpoint` loads."""
    from server.central.teacher import content_hash
    from shared.protocol import checkpoints

    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(path, checkpoints.TEACHER, {
        "members": checkpoints.teacher_state(teacher),
        "meta": {"dataset": cfg.data.dataset, "scenario": scenario, "seed": cfg.seed,
                 "config_hash": fed_teacher_key(cfg), "ensemble": cfg.teacher.ensemble,
                 "epochs": cfg.teacher.epochs, "content_hash": content_hash(teacher),
                 "federated": True, "partition": cfg.fed.partition,
                 "clients": cfg.fed.clients}})


def fed_task(base: dict, scenario: str, seed: int, out: str, clients: int) -> dict:
    import torch

    from server.fed.run import run_inprocess

    cfg = scenario_cfg(base, scenario, seed, Path(out), (f"fed.clients={clients}",))
    torch.set_num_threads(cfg.threads)
    cache, cached = None, False
    if base.get("teachers"):  # reuse teachers of a central bench (same scenario and seed)
        cfg.teacher.checkpoint = str(teacher_path(Path(base["teachers"]), scenario, seed))
    elif base.get("cache_teachers") and not cfg.teacher.checkpoint:
        check_teacher_cache(cfg)
        cache = fed_teacher_path(Path(out), cfg, scenario, seed)
        if cache.is_file():  # trained by an earlier run of this recipe (e.g. the other placement)
            cfg.teacher.checkpoint, cached = str(cache), True
    start = time.perf_counter()
    result = run_inprocess(cfg, progress=False)
    if cache is not None and not cached:
        save_fed_teacher(cache, result.cloud.teacher, cfg, scenario)
    teacher_scores = ({} if base.get("teachers") or base.get("no_teacher_scores")
                      else score_teacher(cfg, result.cloud.teacher))
    write_curves(Path(out), base.get("label") or "fedunikd", scenario, seed, result)
    ev = result.final
    rounds = result.rounds
    return {"method": base.get("label") or "fedunikd", "scenario": scenario, "seed": seed,
            "mf1": ev.get("mf1"), "acc": ev.get("acc"), "train_seconds": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(), "rounds": len(rounds), "exchanges": result.exchanges,
            "bytes_up": sum(r["bytes_up"] for r in rounds),
            "bytes_down": sum(r["bytes_down"] for r in rounds),
            "bytes_up_per_client_round": median(r["bytes_up_per_client"] for r in rounds),
            "bytes_down_per_client_round": median(r["bytes_down_per_client"]
                                                             for r in rounds),
            "rounds_to_95pct": rounds_to_fraction(result.evals, 0.95),
            "mf1_by_eval": [e["mf1"] for e in result.evals if "mf1" in e],
            "mf1_last5_std": last_std([e["mf1"] for e in result.evals if "mf1" in e]),
            "rejected": len(result.rejected), "clients": cfg.fed.clients,
            "partition": cfg.fed.partition, "local_steps": cfg.fed.local_steps,
            "local_steps_mode": cfg.fed.local_steps_mode, "server_step": cfg.fed.server_step,
            "teacher_placement": cfg.fed.teacher_placement,
            "dp": cfg.fed.dp, "secure_aggregation": cfg.fed.secure_aggregation,
            "dp_epsilon_spent": last_value(rounds, "dp_epsilon"),
            "dp_noise_multiplier": last_value(rounds, "dp_noise_multiplier"),
            "teacher": ("central bench" if base.get("teachers") else "cached" if cached
                        else "trained in this run"),
            "teacher_local_steps": cfg.fed.teacher_steps,
            "teacher_server_step": cfg.fed.teacher_step_rule,
            "evaluation": cfg.fed.evaluation,
            "evaluations": len(result.evals), "student_rounds": len(rounds),
            **teacher_scores,
            "mf1_per_edge": per_edge_mf1(ev, scenario, cfg.fed.partition)}


def score_teacher(cfg: RunConfig, teacher) -> dict[str, float]:
    """The federated teacher's MF1 on the target and source test splits: a benchmark's
    measurement, read from the data folder here (the federation never sees target labels).
    Empty where the scenario has several targets."""
    from shared.data.scenario import load_scenario
    from shared.unikd.evaluation import evaluate

    if len(scenario_targets(parse_scenario(cfg.data.scenario)[1])) > 1:
        return {}
    data = load_scenario(cfg.data)
    return {"teacher_mf1": evaluate(teacher, data.trg_test, data.spec.classes)["mf1"],
            "teacher_src_mf1": evaluate(teacher, data.src_test, data.spec.classes)["mf1"]}


CURVE_KEYS = ("round", "src_loss", "src_ce", "src_dom", "src_d_f", "trg_loss", "trg_d_f",
              "trg_w_mean", "trg_dom")


def write_curves(out: Path, label: str, scenario: str, seed: int, result) -> None:
    """OUT/curves/<label>/<scenario>_seed<seed>.json: every evaluation and each round's losses
    (the label-free stopping rule is measured on them, bench/stop_rule.py)."""
    src, trg = parse_scenario(scenario)
    rows = [{k: r[k] for k in CURVE_KEYS if k in r} for r in result.rounds]
    evals = [{k: v for k, v in e.items() if not k.startswith("mf1_client_")}
             for e in result.evals]
    write_json(out / "curves" / label / f"{src}to{trg.replace(',', '+')}_seed{seed}.json",
               {"rounds": rows, "evals": evals, "exchanges": result.exchanges})


def last_value(rounds: list[dict], key: str):
    """The latest round's `key` that is set (None when no round has it)."""
    return next((r[key] for r in reversed(rounds) if r.get(key) is not None), None)


def per_edge_mf1(ev: dict, scenario: str, partition: str) -> dict[str, float]:
    """Each edge's MF1 on its own test windows, from the final evaluation: keyed by the target
    domain it holds under `per-domain` (client i holds the i-th target), else by client id."""
    targets = scenario_targets(parse_scenario(scenario)[1])
    domain = PartitionSpec.parse(partition).kind == "per-domain"
    out = {}
    for key, value in ev.items():
        if key.startswith("mf1_client_"):
            cid = int(key.removeprefix("mf1_client_"))
            out[targets[cid] if domain and cid < len(targets) else str(cid)] = value
    return out


def rounds_to_fraction(evals: list[dict], fraction: float) -> int | None:
    """First evaluated round whose MF1 reaches `fraction` of the final MF1."""
    scored = [e for e in evals if "mf1" in e]
    if not scored:
        return None
    goal = fraction * scored[-1]["mf1"]
    return next(e["round"] for e in scored if e["mf1"] >= goal)


def run_fed_bench(base: dict, spec: DatasetSpec, scenarios: list[str], seeds: list[int], out: Path,
                  jobs: int = 1, clients: dict[str, int] | None = None) -> dict:
    """`clients`: edges per scenario (`clients_per_scenario`); default 5 each."""
    clients = clients or {sc: DEFAULT_CLIENTS for sc in scenarios}
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futs = [pool.submit(fed_task, base, sc, sd, str(out), clients[sc])
                for sc in scenarios for sd in seeds]
        runs = []
        for f in futs:
            runs.append(f.result())
            r = runs[-1]
            log.info("%s %s seed %d: MF1 %.2f, %d rounds, %d exchanges, %.1f MB, %.0fs",
                     r["method"], r["scenario"], r["seed"], r["mf1"] or float("nan"),
                     r["rounds"], r["exchanges"], (r["bytes_up"] + r["bytes_down"]) / 1e6,
                     r["train_seconds"])
    from shared.cli.commands.info import model_info

    runs = merge_previous(out / "results.json", runs)
    teachers = [{"scenario": r["scenario"], "seed": r["seed"], "mf1": float("nan"),
                 "train_seconds": 0.0} for r in runs if r["method"] == runs[0]["method"]]
    report = {"dataset": spec.name, "runs": runs, "teachers": teachers,
              "compression": model_info(spec), "wall_seconds": time.perf_counter() - start,
              "config": base}
    write_json(out / "results.json", report)
    (out / "results.md").write_text(markdown_report(report, spec, with_teacher=False))
    return report
