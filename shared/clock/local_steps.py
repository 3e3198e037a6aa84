"""What one federated round is on the step clock: the meaning of `fed.local_steps` = L.

A round is one step t of the run's clock (shared/clock/steps.py):

- the cloud takes ONE source step, at the weights it sends the edges;
- each edge takes L local steps on its target terms, on batches t*L .. t*L+L-1 of its epoch's
  shuffle. After every step but the last its weights move by plain SGD, w <- w - lr * g_j,
  towards the next batch; the last step's gradient moves nothing on the edge;
- the edge returns the pseudo-gradient (1/L) * sum_j g_j, the mean gradient along its path,
  which the cloud adds to its source gradient. With L = 1 that is the gradient at the weights
  it received, and one round is exactly one centralized step;
- under record DP (`fed.dp=record`) each local step is one DP-SGD step over the node's windows,
  so a UNI-KD round charges every node asked L steps; a federated DANN teacher round is always
  one local step (`TEACHER_ROUND`).

Cloud and edge both read L through this class, so the two sides cannot mean different things.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LocalSteps:
    """L local steps per round on each edge; see the module docstring for what a round is."""

    count: int  # L = fed.local_steps (RoundConfig.local_steps on the wire)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"local_steps={self.count}: a round takes at least one local step")

    def first_batch(self, step: int) -> int:
        """Index of the round's first batch in the epoch's shuffle, for the round at `step`."""
        return step * self.count

    def moves_after(self, j: int) -> bool:
        """Whether local step j (0-based) moves the edge's weights: all but the last do."""
        return j < self.count - 1

    def pseudo_gradient(self, summed: torch.Tensor) -> torch.Tensor:
        """What the edge returns for one parameter, from its L local gradients summed: their
        mean."""
        return summed / self.count

    def dp_steps(self, rounds: int = 1) -> int:
        """DP-SGD steps `rounds` rounds charge each node asked, under record DP."""
        return rounds * self.count

    @property
    def takes_noise_shares(self) -> bool:
        """Whether record DP may add its noise in shares at secure aggregation's mask stage
        (`fed.record_noise=shares`): only with one local step, since a node's later steps
        would run on weights moved by its own weakly noised gradient."""
        return self.count == 1


TEACHER_ROUND = LocalSteps(1)  # a federated DANN teacher round: one local step
