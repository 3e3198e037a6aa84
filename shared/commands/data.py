"""`unikd data check DIR [--dataset NAME]` and `unikd data synth OUT_DIR`."""

from __future__ import annotations

import argparse
import sys

from shared.data.adatime import check_dir, dataset_spec, list_domains
from shared.errors import DataError


def check(args: argparse.Namespace) -> int:
    try:  # GENERIC: every file must match the shape of the first domain
        spec = dataset_spec(args.dataset, args.dir) if args.dataset else None
        problems = check_dir(args.dir, spec)
    except DataError as err:
        problems = [err]
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
                      shift=args.shift, seed=args.seed, channels=args.channels,
                      length=args.length, classes=args.classes)
    files = write_synthetic(args.out_dir, cfg)
    print(f"wrote {len(files)} files for {args.domains} domains to {args.out_dir} "
          f"({cfg.channels} channels x {cfg.length} samples, {cfg.classes} classes)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="validate or generate data in the AdaTime layout")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="validate every file of a folder; lists every problem")
    c.add_argument("dir")
    c.add_argument("--dataset", help="also check channels, length and labels against this "
                                     "dataset (GENERIC: against the folder's first domain)")
    c.set_defaults(func=check)
    s = dsub.add_parser("synth", help="write the seeded synthetic cross-domain data set")
    s.add_argument("out_dir")
    s.add_argument("--domains", type=int, default=4, help="domain 0 is the source (default 4)")
    s.add_argument("--windows-per-class", type=int, default=80)
    s.add_argument("--shift", type=float, default=1.0, help="domain-gap strength, 0 = none")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--channels", type=int, default=9,
                   help="channels per window (default 9; any shape other than 9 x 128 with 6 "
                        "classes writes seeded waveforms instead of the HAR-like data)")
    s.add_argument("--length", type=int, default=128, help="samples per window (default 128)")
    s.add_argument("--classes", type=int, default=6, help="number of classes (default 6)")
    s.set_defaults(func=synth)
