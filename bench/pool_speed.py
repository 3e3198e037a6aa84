"""The conv blocks' max pool in training: PyTorch's nn.MaxPool1d(2, 2, 1) against PairMaxPool1d
(shared/unikd/models/pooling.py), alone and inside a whole teacher / student training step.

    PYTHONPATH=$PWD python bench/pool_speed.py --out bench/results/pool_speed.json

One torch thread (as every trainer here runs), forward + backward, median of --repeats timings
of --steps calls each. Both give the same values and gradients (tests/test_pooling.py). The
last rows time record DP's per-window gradients (torch.func.vmap of grad over 32 windows, each
a batch of one) with the new path forced on: the reason a batch of one keeps the library's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from shared.privacy.dp_sgd import frozen_bn, per_sample_grads
from shared.unikd.models.cnn1d import CNN1d
from shared.unikd.models.pooling import PairMaxPool1d

# the pool inputs of a HAR-shaped (9 x 128, batch 32) teacher (width 64) and student (16)
POOL_SHAPES = [(32, 64, 129), (32, 128, 66), (32, 128, 34), (32, 16, 129), (32, 32, 66)]


def median_ms(fn, steps: int, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def pool_step(pool: nn.Module, x: torch.Tensor):
    return lambda: pool(x).sum().backward()


def model_step(model: CNN1d, x: torch.Tensor):
    def step():
        h, logits = model.features_and_logits(x)
        (logits.logsumexp(1).mean() + h.pow(2).mean()).backward()
    return step


class WindowLoss(nn.Module):
    """One window's cross-entropy: the loss module record DP differentiates per window."""

    def __init__(self, model: CNN1d) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.model(x), y)


def per_window_step(model: CNN1d, x: torch.Tensor):
    """Record DP's per-window gradients (shared/privacy/dp_sgd.py, BN frozen as there)."""
    loss, y = WindowLoss(model), torch.zeros(len(x), dtype=torch.long)

    def step():
        with frozen_bn(loss):
            per_sample_grads(loss, (x, y))
    return step


def use_library_pool(model: CNN1d) -> CNN1d:
    for block in (model.block1, model.block2, model.block3):
        for i, layer in enumerate(block):
            if isinstance(layer, PairMaxPool1d):
                block[i] = nn.MaxPool1d(2, 2, 1)
    return model


def model_pair(width: int, features: int) -> tuple[CNN1d, CNN1d]:
    """A HAR-shaped model with PairMaxPool1d and one with the library's pool."""
    return (CNN1d(9, 6, width, features).train(),
            use_library_pool(CNN1d(9, 6, width, features).train()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/pool_speed.json")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for shape in POOL_SHAPES:
        x = torch.randn(shape).relu().requires_grad_()
        lib = median_ms(pool_step(nn.MaxPool1d(2, 2, 1), x), args.steps, args.repeats)
        ours = median_ms(pool_step(PairMaxPool1d().train(), x), args.steps, args.repeats)
        rows.append({"what": f"pool {list(shape)}", "library_ms": lib, "pair_ms": ours})
    x = torch.randn(32, 9, 128)
    for name, width, features in (("teacher", 64, 128), ("student", 16, 32)):
        ours_model, lib_model = model_pair(width, features)
        lib = median_ms(model_step(lib_model, x), args.steps, args.repeats)
        ours = median_ms(model_step(ours_model, x), args.steps, args.repeats)
        rows.append({"what": f"{name} step [32, 9, 128]", "library_ms": lib, "pair_ms": ours})
    per_window_calls = args.steps // 10 or 1
    for name, width, features in (("teacher", 64, 128), ("student", 16, 32)):
        ours_model, lib_model = model_pair(width, features)
        lib = median_ms(per_window_step(lib_model, x), per_window_calls, args.repeats)
        own = PairMaxPool1d.fast_path
        PairMaxPool1d.fast_path = lambda self, x: True  # forced on for a batch of one
        try:
            ours = median_ms(per_window_step(ours_model, x), per_window_calls, args.repeats)
        finally:
            PairMaxPool1d.fast_path = own
        rows.append({"what": f"{name} per-window grads x32 (vmap), new path forced",
                     "library_ms": lib, "pair_ms": ours})
    for r in rows:
        r["speedup"] = r["library_ms"] / r["pair_ms"]
        print(f"{r['what']:28s} library {r['library_ms']:7.3f} ms  pair {r['pair_ms']:7.3f} ms  "
              f"x{r['speedup']:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor()
        or platform.machine(), "torch": torch.__version__, "threads": 1, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
