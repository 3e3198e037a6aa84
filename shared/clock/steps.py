"""The step clock: batches and epoch bookkeeping for every trainer.

The centralized trainers (DANN teacher, UNI-KD, baselines) and the federated rounds use it alike.

Batches come from per-(seed, stream, step) generators (shared.clock.seeding, which also seeds the
dropout masks and model construction), the same ones the federation uses: the source side draws
from stream 0 and the target side from client 0's stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from shared.data.loaders import epoch_batches
from shared.clock.seeding import BATCHES, SOURCE_STREAM, client_stream, generator_for


@dataclass
class StepInfo:
    epoch: int  # 1-based, as the schedules expect
    step: int  # 0-based inside the epoch
    global_step: int  # 0-based over the whole run
    steps_per_epoch: int
    num_epochs: int
    src_idx: torch.Tensor
    trg_idx: torch.Tensor


def steps_per_epoch(n_src: int, n_trg: int, batch_size: int) -> int:
    """zip(source, target) with drop_last: the shorter loader sets the epoch length."""
    return max(1, min(n_src // min(batch_size, n_src), n_trg // min(batch_size, n_trg)))


def batch_plan(seed: int, stream: int, epoch: int, n: int, batch_size: int) -> list[torch.Tensor]:
    return epoch_batches(n, batch_size, generator_for(seed, stream, epoch, BATCHES.number()))


# Progress bars draw on a terminal only (tqdm's disable=None); logs and CI get round lines.


def iterate_steps(seed: int, n_src: int, n_trg: int, batch_size: int, num_epochs: int,
                  desc: str = "", progress: bool = True) -> Iterator[StepInfo]:
    spe = steps_per_epoch(n_src, n_trg, batch_size)
    bar = tqdm(total=spe * num_epochs, desc=desc, disable=None if progress else True, leave=False,
               dynamic_ncols=True)
    g = 0
    for epoch in range(1, num_epochs + 1):
        src = batch_plan(seed, SOURCE_STREAM, epoch, n_src, batch_size)
        trg = batch_plan(seed, client_stream(0), epoch, n_trg, batch_size)
        for step in range(spe):
            yield StepInfo(epoch, step, g, spe, num_epochs, src[step % len(src)],
                           trg[step % len(trg)])
            g += 1
            bar.update(1)
    bar.close()


class EpochLog:
    """Averages named scalars over an epoch's steps."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def run_epochs(seed: int, n_src: int, n_trg: int, batch_size: int, num_epochs: int,
               step: Callable[[StepInfo], dict[str, float]], desc: str = "",
               progress: bool = True) -> list[dict]:
    """Call `step` at every step of the clock; one row of averaged scalars per epoch."""
    history: list[dict] = []
    epoch_log, last_epoch = EpochLog(), 1
    for s in iterate_steps(seed, n_src, n_trg, batch_size, num_epochs, desc, progress):
        if s.epoch != last_epoch:
            history.append({"epoch": last_epoch, **epoch_log.means()})
            epoch_log, last_epoch = EpochLog(), s.epoch
        epoch_log.add(step(s))
    history.append({"epoch": last_epoch, **epoch_log.means()})
    return history
