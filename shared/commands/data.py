"""`unikd data check DIR [--dataset NAME]` and `unikd data synth OUT_DIR`."""

from __future__ import annotations

import argparse
import sys

from shared.data.adatime import check_dir, list_domains
from shared.datasets import get_spec


def check(args: argparse.Namespace) -> int:
    spec = get_spec(args.dataset) if args.dataset else None
    problems = check_dir(args.dir, spec)
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"{len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    n = len(list_domains(args.dir))
    print(f"OK {args.dir}: {n} domains, {2 * n} files valid"
          + (f" for {spec.name}" if spec else ""))
    return 0


def synth(args: argparse.Namespace) -> int:
    from shared.data.synth import SynthConfig, write_synthetic

    cfg = SynthConfig(domains=args.domains, windows_per_class=args.windows_per_class,
                      shift=args.shift, seed=args.seed)
    files = write_synthetic(args.out_dir, cfg)
    print(f"wrote {len(files)} files for {args.domains} domains to {args.out_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="validate or generate data in the AdaTime layout")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="validate every file of a folder; lists every problem")
    c.add_argument("dir")
    c.add_argument("--dataset", help="also check channels, length and labels against this dataset")
    c.set_defaults(func=check)
    s = dsub.add_parser("synth", help="write the seeded synthetic cross-domain data set")
    s.add_argument("out_dir")
    s.add_argument("--domains", type=int, default=4, help="domain 0 is the source (default 4)")
    s.add_argument("--windows-per-class", type=int, default=80)
    s.add_argument("--shift", type=float, default=1.0, help="domain-gap strength, 0 = none")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=synth)
