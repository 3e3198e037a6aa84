"""The record codec: Flower's own Array(ndarray)/Array.numpy() against shared/protocol/npy.py.

Encodes and decodes the records of one train message (student + adapter state with BN buffers,
D_f, D_d: HAR shapes) and checks the bytes are identical. CPU time per record, best of 5 x 200.

    python bench/codec.py --out bench/results/codec.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord  # noqa: E402

from shared.data.datasets import get_spec  # noqa: E402
from shared.unikd.engine import UniKDNets  # noqa: E402
from shared.protocol import npy  # noqa: E402
from shared.protocol.records import student_state  # noqa: E402


def best_ms(fn, reps: int = 200, tries: int = 5) -> float:
    best = float("inf")
    for _ in range(tries):
        t = time.process_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.process_time() - t) / reps)
    return best * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "codec.json"))
    args = ap.parse_args()
    nets = UniKDNets.for_spec(get_spec("HAR"))
    state = {**student_state(nets), **{f"d_f.{k}": v for k, v in nets.d_f.state_dict().items()},
             **{f"d_d.{k}": v for k, v in nets.d_d.state_dict().items()}}
    arrays = {k: v.numpy().copy() for k, v in state.items()}
    flower = ArrayRecord({k: Array(a) for k, a in arrays.items()})
    ours = ArrayRecord({k: npy.to_array(a) for k, a in arrays.items()})
    same = all(flower[k].data == ours[k].data for k in arrays)
    report = {
        "what": "encode/decode of one train message's records (HAR), CPU ms per record",
        "arrays": len(arrays), "bytes": sum(len(ours[k].data) for k in arrays),
        "identical_bytes": same,
        "flower_encode_ms": best_ms(lambda: {k: Array(a) for k, a in arrays.items()}),
        "ours_encode_ms": best_ms(lambda: {k: npy.to_array(a) for k, a in arrays.items()}),
        "flower_decode_ms": best_ms(lambda: {k: a.numpy() for k, a in flower.items()}),
        "ours_decode_ms": best_ms(lambda: {k: npy.from_array(a) for k, a in ours.items()}),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "loadavg": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
