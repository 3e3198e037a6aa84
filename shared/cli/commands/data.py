"""`unikd data check DIR [--dataset NAME]`, `unikd data synth OUT_DIR` and
`unikd data import SRC OUT_DIR`."""

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


def import_cmd(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shared.data.importer import import_windows

    allowed = ({d.strip() for d in args.domains.split(",") if d.strip()}
               if args.domains else None)
    result = import_windows(Path(args.src), Path(args.out_dir), args.format, args.channels,
                            args.test_fraction, args.seed, allowed, args.channels_last,
                            args.force)
    for d, n in result.counts.items():
        print(f"  domain {d}: {n['train']} train, {n['test']} test")
    print(f"OK wrote {len(result.files)} files to {args.out_dir}: {result.channels} channels x "
          f"{result.length} samples, {result.classes} classes; use --dataset GENERIC "
          f"--data {args.out_dir}")
    return 0


IMPORT_HELP = """\
Turn labelled windows into the AdaTime layout (train_<domain>.pt / test_<domain>.pt with
`samples` [N, C, L] float32 and `labels` int64), checked like every AdaTime folder.

Inputs (every window has a label and a domain id; a train/test split is optional):
  FILE.npz   arrays samples [N, C, L] (or [N, L]; [N, L, C] with --channels-last),
             labels [N] integers >= 0, domains [N] integers or strings, optional split [N]
             ("train"/"test" or 0/1)
  FOLDER     samples.npy, labels.npy, domains.npy, optional split.npy (same meaning;
             loaded without pickle)
  FILE.csv   a header row, then one window per row: columns `domain`, `label`, optional
             `split`; every other column is a value, channel-major (all samples of
             channel 0, then channel 1, ...), --channels per row

Train/test: the split column/array when given; otherwise per (domain, class) a seeded
stratified fraction (--test-fraction, --seed) goes to test, at least one window stays in
train. Domain ids become file names (letters, digits, '_', '-').

Nothing is written when any row is bad; each problem is reported as FILE:ROW (CSV line
number, or window index for NumPy input) with what is wrong: NaN/Inf, a wrong number of
values, a non-number, a non-integer or negative label, an unknown domain (--domains)."""


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
    i = dsub.add_parser("import", help="NumPy (.npz/.npy) or CSV windows -> AdaTime layout",
                        description=IMPORT_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("src", help="FILE.npz, FILE.csv, or a folder of .npy files")
    i.add_argument("out_dir", help="where train_<domain>.pt / test_<domain>.pt are written")
    i.add_argument("--format", default="auto", choices=["auto", "npz", "npy", "csv"],
                   help="default: from the file name (a folder means .npy files)")
    i.add_argument("--channels", type=int, default=1, help="channels per CSV row (default 1)")
    i.add_argument("--channels-last", action="store_true",
                   help="NumPy samples are [N, L, C] instead of [N, C, L]")
    i.add_argument("--test-fraction", type=float, default=0.25,
                   help="share of each (domain, class) that goes to test when the input has "
                        "no split (default 0.25)")
    i.add_argument("--seed", type=int, default=0, help="seed of that split (default 0)")
    i.add_argument("--domains", help="comma list of the domain ids expected; any other is an "
                                     "error")
    i.add_argument("--force", action="store_true",
                   help="write into a folder that already holds AdaTime files")
    i.set_defaults(func=import_cmd)
