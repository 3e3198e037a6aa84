"""Cloud-side subcommands: `unikd teacher`, `unikd distill`, `unikd bench central`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from shared.config import METHODS, load_config
from shared.datasets import get_spec, parse_scenario

log = logging.getLogger(__name__)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set distill.epochs=10 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace):
    cfg = load_config(args.config, args.set)
    torch.set_num_threads(cfg.threads)
    return cfg


def teacher_cmd(args: argparse.Namespace) -> int:
    from server.central.runner import run_teacher

    run_teacher(_config(args), progress=not args.quiet)
    return 0


def distill_cmd(args: argparse.Namespace) -> int:
    from server.central.runner import run_distill

    cfg = _config(args)
    if args.method:  # an explicit flag wins over the file; otherwise the file's distill.method
        cfg = load_config(args.config, [*args.set, f"distill.method={args.method}"])
    run_distill(cfg, cfg.distill.method, progress=not args.quiet)
    return 0


def federate_cmd(args: argparse.Namespace) -> int:
    from server.fed.run import run_federate

    if args.resume:  # the run's own resolved config, plus any --set given now
        args.config = str(Path(args.resume) / "config.yaml")
    run_federate(_config(args), progress=not args.quiet,
                 resume=Path(args.resume) if args.resume else None)
    return 0


def bench_central_cmd(args: argparse.Namespace) -> int:
    from server.bench.central import run_bench

    overrides = list(args.set) + [f"data.dataset={args.dataset}"]
    if args.data:
        overrides.append(f"data.path={Path(args.data).resolve()}")
    cfg = load_config(args.config, overrides)  # validate early, in this process
    spec = get_spec(cfg.data.dataset)
    scenarios = ([f"{a}->{b}" for a, b in map(parse_scenario, args.scenarios.split(","))]
                 if args.scenarios else [f"{a}->{b}" for a, b in spec.scenarios])
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from server.central.runner import get_method

    for m in methods:
        get_method(m)
    if args.label and len(methods) != 1:
        from shared.errors import UnikdError

        raise UnikdError("--label names one variant: give exactly one method with it")
    base = {"file": args.config, "overrides": overrides, "label": args.label}
    report = run_bench(base, spec, methods, scenarios, seeds, Path(args.out), args.jobs)
    print((Path(args.out) / "results.md").read_text())
    return 0 if report["runs"] else 1


def bench_federated_cmd(args: argparse.Namespace) -> int:
    from server.bench.federated import run_fed_bench

    overrides = list(args.set) + [f"data.dataset={args.dataset}", f"fed.clients={args.clients}",
                                  f"fed.partition={args.partition}"]
    if args.data:
        overrides.append(f"data.path={Path(args.data).resolve()}")
    cfg = load_config(args.config, overrides)
    spec = get_spec(cfg.data.dataset)
    scenarios = ([f"{a}->{b}" for a, b in map(parse_scenario, args.scenarios.split(","))]
                 if args.scenarios else [f"{a}->{b}" for a, b in spec.scenarios])
    seeds = [int(s) for s in args.seeds.split(",")]
    base = {"file": args.config, "overrides": overrides, "label": args.label,
            "teachers": str(Path(args.teachers).resolve()) if args.teachers else None}
    report = run_fed_bench(base, spec, scenarios, seeds, Path(args.out), args.jobs)
    print((Path(args.out) / "results.md").read_text())
    return 0 if report["runs"] else 1


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
    _add_config_args(b)
    b.add_argument("--data", help="AdaTime folder (default: embedded synthetic data)")
    b.add_argument("--dataset", default="SYNTH")
    b.add_argument("--methods", default="unikd,source-only")
    b.add_argument("--scenarios", help="comma list like 2:11,7:13 (default: the dataset's 10)")
    b.add_argument("--seeds", default="0,1,2")
    b.add_argument("--out", required=True)
    b.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    b.add_argument("--label", help="name this variant in the tables (e.g. unikd+adv); it shares "
                                   "the cached teachers of the same --out")
    b.set_defaults(func=bench_central_cmd)

    f = bsub.add_parser("federated", help="simulated federations x scenarios x seeds")
    _add_config_args(f)
    f.add_argument("--data", help="AdaTime folder (default: embedded synthetic data)")
    f.add_argument("--dataset", default="SYNTH")
    f.add_argument("--clients", type=int, default=5)
    f.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA | per-domain")
    f.add_argument("--scenarios", help="comma list like 2:11,7:13 (default: the dataset's 10)")
    f.add_argument("--seeds", default="0,1,2")
    f.add_argument("--out", required=True)
    f.add_argument("--jobs", type=int, default=1)
    f.add_argument("--label", help="name of this variant in the tables (default fedunikd)")
    f.add_argument("--teachers", metavar="CENTRAL_BENCH_DIR",
                   help="reuse the DANN teachers cached by `bench central --out DIR` instead of "
                        "pre-training them federatedly")
    f.set_defaults(func=bench_federated_cmd)
