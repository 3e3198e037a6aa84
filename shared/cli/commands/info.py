"""`unikd info [--dataset NAME | --data DIR] [--json]`: model sizes, MACs, compression."""

from __future__ import annotations

import argparse
import json

from shared.data.adatime import dataset_spec
from shared.data.datasets import DatasetSpec
from shared.unikd.models import count_macs, count_params, student_for, teacher_for


def model_info(spec: DatasetSpec) -> dict:
    teacher, student = teacher_for(spec), student_for(spec)
    t_params, s_params = count_params(teacher), count_params(student)
    t_macs = count_macs(teacher, spec.channels, spec.length)
    s_macs = count_macs(student, spec.channels, spec.length)
    return {
        "dataset": spec.name,
        "input": {"channels": spec.channels, "length": spec.length, "classes": spec.classes},
        "first_conv": {"kernel": spec.kernel, "stride": spec.stride},
        "batch_size": spec.batch_size,
        "teacher": {"params": t_params, "macs": t_macs},
        "student": {"params": s_params, "macs": s_macs},
        "compression": {"params": round(t_params / s_params, 2), "macs": round(t_macs / s_macs, 2)},
    }


def run(args: argparse.Namespace) -> int:
    name = args.dataset or ("GENERIC" if args.data else "HAR")
    info = model_info(dataset_spec(name, args.data))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    t, s, c = info["teacher"], info["student"], info["compression"]
    print(f"{info['dataset']}: {info['input']['channels']} channels x {info['input']['length']} "
          f"samples, {info['input']['classes']} classes; first conv kernel "
          f"{info['first_conv']['kernel']} stride {info['first_conv']['stride']}, batch "
          f"{info['batch_size']}")
    print(f"  teacher  {t['params']:>9,} params  {t['macs'] / 1e6:8.3f} M MACs/window")
    print(f"  student  {s['params']:>9,} params  {s['macs'] / 1e6:8.3f} M MACs/window")
    print(f"  compression  {c['params']}x params, {c['macs']}x MACs")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="teacher/student size, MACs and compression for a dataset")
    p.add_argument("--dataset", help="HAR, HHAR, FD, SSC, SYNTH or GENERIC (default HAR, or "
                                     "GENERIC with --data)")
    p.add_argument("--data", help="AdaTime folder: GENERIC reads channels, length and classes "
                                  "from its files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
