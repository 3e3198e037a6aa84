"""Cloud-side subcommands: `unikd teacher | distill | federate | bench central | bench federated`."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.config import METHODS, Resolution, load_config, resolve_config
from shared.data.datasets import DatasetSpec, format_scenario, parse_scenario_list
from shared.errors import UnikdError
from shared.unikd.compute import resolve_device

log = logging.getLogger(__name__)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set distill.epochs=10 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace, extra: tuple[str, ...] = ()):
    res = resolve_config(args.config, [*args.set, *extra])
    check_device(res)
    torch.set_num_threads(res.config.threads)
    return res.config


def check_device(res: Resolution) -> None:
    """`device: cuda` on a machine without CUDA stops the command before any work, naming the
    key and where the value came from (the config file or --set)."""
    resolve_device(res.config.device, res.sources.get("device"))


def teacher_cmd(args: argparse.Namespace) -> int:
    from server.central.runner import run_teacher

    run_teacher(_config(args), progress=not args.quiet)
    return 0


def distill_cmd(args: argparse.Namespace) -> int:
    from server.central.runner import run_distill

    # an explicit flag wins over the file; otherwise the file's distill.method
    cfg = _config(args, (f"distill.method={args.method}",) if args.method else ())
    run_distill(cfg, cfg.distill.method, progress=not args.quiet)
    return 0


def federate_cmd(args: argparse.Namespace) -> int:
    from server.fed.run import run_federate

    if args.resume:  # the run's own resolved config, plus any --set given now
        args.config = str(Path(args.resume) / "config.yaml")
    run_federate(_config(args), progress=not args.quiet,
                 resume=Path(args.resume) if args.resume else None)
    return 0


@dataclass
class BenchPlan:
    """What both benchmarks need from their common arguments, checked before any work starts."""

    spec: DatasetSpec
    scenarios: list[str]  # as written in the reports: 2->11, or 2->11+13+16 (one per edge)
    seeds: list[int]
    base: dict  # config file, overrides and label: each worker process rebuilds its config


def bench_plan(args: argparse.Namespace, extra: list[str]) -> BenchPlan:
    """Config, dataset spec (GENERIC: from the files), scenarios and seeds of `unikd bench`."""
    from shared.data.scenario import resolve_spec

    overrides = list(args.set) + [f"data.dataset={args.dataset}", *extra]
    if args.data:
        overrides.append(f"data.path={Path(args.data).resolve()}")
    res = resolve_config(args.config, overrides)  # validate early, in this process
    check_device(res)
    cfg = res.config
    spec = resolve_spec(cfg.data)
    if args.scenarios:
        pairs = parse_scenario_list(args.scenarios)
    elif spec.scenarios:
        pairs = list(spec.scenarios)
    else:
        raise UnikdError(f"dataset {spec.name} has no scenario list of its own: give "
                         f"--scenarios, e.g. --scenarios 0->1,0->2")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UnikdError(f"--seeds {args.seeds!r}: give a comma list of integers") from None
    return BenchPlan(spec, [format_scenario(p) for p in pairs], seeds,
                     {"file": args.config, "overrides": overrides, "label": args.label})


def bench_central_cmd(args: argparse.Namespace) -> int:
    from server.bench.central import run_bench
    from server.central.runner import get_method

    plan = bench_plan(args, [])
    several = [sc for sc in plan.scenarios if "+" in sc]
    if several:
        raise UnikdError(f"bench central trains on one target domain per scenario; "
                         f"{', '.join(several)} list several (that is `bench federated "
                         f"--partition per-domain`)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)
    if args.label and len(methods) != 1:
        raise UnikdError("--label names one variant: give exactly one method with it")
    if args.ema_probes:
        try:
            probes = [float(v) for v in args.ema_probes.split(",") if v.strip()]
        except ValueError:
            raise UnikdError(f"--ema-probes {args.ema_probes!r}: give a comma list of decays "
                             f"in (0, 1)") from None
        if not all(0.0 < v < 1.0 for v in probes):
            raise UnikdError(f"--ema-probes {args.ema_probes!r}: every decay must be in (0, 1)")
        plan.base["ema_probes"] = probes
    report = run_bench(plan.base, plan.spec, methods, plan.scenarios, plan.seeds,
                       Path(args.out), args.jobs)
    print((Path(args.out) / "results.md").read_text())
    return 0 if report["runs"] else 1


def bench_federated_cmd(args: argparse.Namespace) -> int:
    from server.bench.federated import clients_per_scenario, run_fed_bench

    plan = bench_plan(args, [f"fed.partition={args.partition}"])
    clients = clients_per_scenario(plan.scenarios, args.partition, args.clients)
    plan.base["teachers"] = str(Path(args.teachers).resolve()) if args.teachers else None
    if args.cache_teachers:
        if args.teachers:
            raise UnikdError("--cache-teachers caches federated teachers; --teachers reuses "
                             "central ones: give one of the two")
        from server.bench.federated import check_teacher_cache

        check_teacher_cache(load_config(plan.base["file"], plan.base["overrides"]))
        plan.base["cache_teachers"] = True
    report = run_fed_bench(plan.base, plan.spec, plan.scenarios, plan.seeds, Path(args.out),
                           args.jobs, clients)
    print((Path(args.out) / "results.md").read_text())
    return 0 if report["runs"] else 1


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    """The arguments `bench central` and `bench federated` share."""
    _add_config_args(p)
    p.add_argument("--data", help="AdaTime folder (default: embedded synthetic data)")
    p.add_argument("--dataset", default="SYNTH",
                   help="HAR, HHAR, FD, SSC, SYNTH, or GENERIC (shape read from --data)")
    p.add_argument("--scenarios", help=SCENARIOS_HELP)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes")


SCENARIOS_HELP = ("scenarios separated by ',' or ';', e.g. 2:11,7:13 or 2->11;7->13; several "
                  "target domains of one scenario are joined by '+' (2->11+13+16, one per edge "
                  "with --partition per-domain). Default: the dataset's 10")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="pre-train a DANN teacher for one scenario")
    _add_config_args(p)
    p.set_defaults(func=teacher_cmd)

    p = sub.add_parser("distill", help="distill a student centrally (UNI-KD or a baseline)")
    _add_config_args(p)
    p.add_argument("--method", default=None, choices=METHODS,
                   help="what to train (default: the config's distill.method, itself "
                        "unikd by default)")
    p.set_defaults(func=distill_cmd)

    p = sub.add_parser("federate", help="simulate a federation (default: 3 edges, synthetic data)")
    _add_config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=federate_cmd)

    p = sub.add_parser("bench", help="benchmarks that write results.json and a Markdown table")
    bsub = p.add_subparsers(dest="bench_command", metavar="KIND", required=True)
    b = bsub.add_parser("central", help="centralized methods x scenarios x seeds")
    _add_bench_args(b)
    b.add_argument("--methods", default="unikd,source-only")
    b.add_argument("--label", help="name this variant in the tables (e.g. unikd+adv); it shares "
                                   "the cached teachers of the same --out")
    b.add_argument("--ema-probes", metavar="D1,D2,...",
                   help="unikd only: keep an EMA of the student per decay beside each run and "
                        "record its MF1 and teacher agreement every epoch (results.json "
                        "`probes`); training is unchanged, so each equals a run with "
                        "distill.ema_decay=D")
    b.set_defaults(func=bench_central_cmd)

    f = bsub.add_parser("federated", help="simulated federations x scenarios x seeds")
    _add_bench_args(f)
    f.add_argument("--clients", type=int,
                   help="edges per federation (default 5; per-domain: one per target domain)")
    f.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA | per-domain")
    f.add_argument("--label", help="name of this variant in the tables (default fedunikd)")
    f.add_argument("--teachers", metavar="CENTRAL_BENCH_DIR",
                   help="reuse the DANN teachers cached by `bench central --out DIR` instead of "
                        "pre-training them federatedly")
    f.add_argument("--cache-teachers", action="store_true",
                   help="keep each federated DANN teacher under OUT/fed-teachers/, keyed by "
                        "the config (all but fed.teacher_placement edge|cloud) and (scenario, "
                        "seed): a later run of the same recipe in the same --out, e.g. the other "
                        "placement, loads it instead of training it again")
    f.set_defaults(func=bench_federated_cmd)
