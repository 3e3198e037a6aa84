"""Normalisation and batching.

Batches are index tensors drawn from an explicitly seeded generator rather than a DataLoader:
the centralized trainer and the federated split must draw the very same batches (one engine,
two placements), and tiny in-memory tensors need no worker machinery.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Normalizer:
    """Per-channel z-scoring with statistics from the source training split."""

    mean: torch.Tensor  # [C]
    std: torch.Tensor  # [C]

    @classmethod
    def fit(cls, x: torch.Tensor) -> Normalizer:
        mean = x.mean(dim=(0, 2))
        std = x.std(dim=(0, 2)).clamp_min(1e-6)
        return cls(mean, std)

    @classmethod
    def identity(cls, channels: int) -> Normalizer:
        return cls(torch.zeros(channels), torch.ones(channels))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[None, :, None]) / self.std[None, :, None]


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True,
) -> list[torch.Tensor]:
    """One shuffled pass over n samples; training drops the ragged tail so batches are equal."""
    perm = torch.randperm(n, generator=generator)
    bs = min(batch_size, n)
    stop = (n // bs) * bs if drop_last else n
    return [perm[i:i + bs] for i in range(0, stop, bs)]


def eval_chunks(n: int, batch_size: int = 512) -> Iterator[slice]:
    """Every sample, in order: test sets never drop a tail (spec §8.9)."""
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))
