"""Measure the domain gap of the synthetic data: source-only student, source vs target macro-F1.

For shift in {0, 1} and three seeds, a student is trained on domain 0 (train split) only and
scored on the test split of every domain. A real gap at shift=1 and none at shift=0 is what
makes SYNTH a useful stand-in for a cross-domain benchmark.

    python bench/synth_gap.py [--epochs 30] [--seeds 0 1 2] [--out bench/results/synth_gap.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from shared.data.loaders import Normalizer, epoch_batches, eval_chunks
from shared.data.synth import SynthConfig, generate_domain
from shared.data.datasets import get_spec
from shared.unikd.metrics import macro_f1
from shared.unikd.models import student_for

SHIFTS = (0.0, 1.0)


def train_source_only(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int) -> nn.Module:
    spec = get_spec("SYNTH")
    torch.manual_seed(seed)  # model init; batches use their own generator
    model = student_for(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in epoch_batches(len(y), spec.batch_size, gen):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    pred = torch.cat([model(x[s]).argmax(1) for s in eval_chunks(len(y))])
    return macro_f1(y, pred, get_spec("SYNTH").classes)


def run_one(shift: float, seed: int, epochs: int, domains: int) -> list[float]:
    """MF1 of the source-only student on the test split of each domain (index 0 = source)."""
    cfg = SynthConfig(domains=domains, shift=shift, seed=seed)
    x_src, y_src = generate_domain(0, "train", cfg)
    norm = Normalizer.fit(x_src)
    model = train_source_only(norm(x_src), y_src, seed, epochs)
    out = []
    for d in range(domains):
        x, y = generate_domain(d, "test", cfg)
        out.append(evaluate(model, norm(x), y))
    return out


def run_oracle(shift: float, seed: int, epochs: int, domains: int) -> list[float]:
    """MF1 of a student trained on each target's own train split: the in-domain ceiling."""
    cfg = SynthConfig(domains=domains, shift=shift, seed=seed)
    out = []
    for d in range(1, domains):
        x, y = generate_domain(d, "train", cfg)
        norm = Normalizer.fit(x)
        model = train_source_only(norm(x), y, seed, epochs)
        x_te, y_te = generate_domain(d, "test", cfg)
        out.append(evaluate(model, norm(x_te), y_te))
    return out


def _mean(rows: list[list[float]]) -> list[float]:
    return [sum(col) / len(col) for col in zip(*rows)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--domains", type=int, default=SynthConfig().domains)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "synth_gap.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    cfg = SynthConfig(domains=args.domains)
    for d in range(cfg.domains):
        for split in ("train", "test"):
            generate_domain(d, split, cfg)
    gen_s = time.perf_counter() - t0

    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for shift in SHIFTS:
        per_seed = {str(s): run_one(shift, s, args.epochs, args.domains) for s in args.seeds}
        oracle = {str(s): run_oracle(shift, s, args.epochs, args.domains) for s in args.seeds}
        mean = _mean(list(per_seed.values()))
        target_mean = sum(mean[1:]) / len(mean[1:])
        results[str(shift)] = {
            "per_seed_mf1": per_seed,  # [source, target 1, ...] per seed
            "mean_mf1": mean,
            "source_mf1": mean[0],
            "target_mf1_mean": target_mean,
            "gap": mean[0] - target_mean,
            "target_only_per_seed_mf1": oracle,  # [target 1, ...]: trained in-domain
            "target_only_mean_mf1": _mean(list(oracle.values())),
        }
    train_s = time.perf_counter() - t0

    report = {
        "setup": {"model": "student", "optimizer": "Adam lr=1e-2 wd=1e-4", "batch": 32,
                  "epochs": args.epochs, "seeds": args.seeds, "domains": args.domains,
                  "metric": "macro-F1 (%) on test splits", "threads": 1},
        "generation_seconds": round(gen_s, 3),
        "benchmark_seconds": round(train_s, 1),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    names = ["src"] + [f"trg{d}" for d in range(1, args.domains)]
    header = "shift  " + "  ".join(f"{name:>6}" for name in names)
    print("source-only student, macro-F1 % on test splits, mean over seeds " + str(args.seeds))
    print(header + "   tgt-mean    gap")
    for shift, r in results.items():
        cells = "  ".join(f"{v:6.1f}" for v in r["mean_mf1"])
        print(f"{float(shift):5.1f}  {cells}   {r['target_mf1_mean']:8.1f}  {r['gap']:5.1f}")
        oracle = "  ".join(f"{v:6.1f}" for v in r["target_only_mean_mf1"])
        print(f"{'':5s}  {'':6s}  {oracle}   (target-only ceiling)")
    print(f"generation {gen_s:.2f}s, benchmark {train_s:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
