"""What one federated round is on the step clock: the meaning of `fed.local_steps` = L and of
`fed.local_steps_mode`. Cloud and edges both read it here, so the two sides cannot mean
different things.

The run's clock has T steps (distill.epochs x steps per epoch, shared/clock/steps.py); step t has
its own source batch, target batch, dropout draws and schedule values (β, GRL α), exactly those
of the centralized trainer's step t. A round is one message exchange. It is one of two kinds:

`fed.local_steps_mode: edge` (the rounds of issue 12)
- round r is ONE step t = r - 1 of the clock: T rounds;
- the cloud takes one source step, at the weights it sends the edges;
- each edge takes L local steps on its target terms, on batches t*L .. t*L+L-1 of its epoch's
  shuffle, all with step t's schedule values. After every step but the last its weights move
  by plain SGD, w <- w - lr * g_j; the last step's gradient moves nothing;
- the edge returns the pseudo-gradient (1/L) * sum_j g_j, the mean gradient along its path;
  the cloud adds it to its source gradient and takes ONE Adam step. L > 1 multiplies the edge's
  work per round and saves no round.

`fed.local_steps_mode: both` (the default, with L = 1; issue 26: L times fewer exchanges)
- round r covers L consecutive steps of the clock, t0 = (r - 1) * L .. t0 + L - 1 (the last
  round fewer, where L does not divide T): ceil(T / L) rounds;
- the cloud runs the L source halves of those steps on its own copy of the weights, each edge
  the L target halves on its own; local step j is step t0 + j on both sides: that step's
  batches, dropout draws and schedule values (each side computes them with the same
  `ScheduleClock`; the round config carries the first step, L and the clock);
- between steps each side moves (`fed.local_path`, `PathMover`): `preconditioned` (the
  default) along its own half's gradient plus the other side's latest pseudo-gradient (a
  control variate for the half it does not hold), scaled by the cloud's Adam second moments
  and clamped, so the path follows the centralized trajectory; `plain` by SGD as above, which
  barely moves;
- each side's pseudo-gradient is its mean gradient (of its own half) along its own path; the
  cloud combines pg = pg_source + sum_k n_k/N pg_target,k, the mean over the round's steps of
  the gradient of the centralized objective, and applies it with its Adam optimizers as the
  server optimizer ("FedOpt"), sized to advance L steps (`fed.server_step`: `sqrt-lr`, the
  default, L Adam steps at lr/sqrt(L); `repeat` at lr; `scaled-lr` one step at L·lr;
  server/fed/server_step.py);
- BN running statistics: the cloud's L source updates, then the clients' mean L target
  updates (aggregate.compose_bn with L target passes);
- evaluations and checkpoints follow the steps: after each round in which an epoch of steps
  (a checkpoint period) ends. So L changes the number of exchanges and nothing else; under
  `fed.evaluation: piggyback` an evaluation rides on the next round's exchange (the weights it
  sends are the ones to score), and only the one after the last round is an exchange.

With L = 1 both kinds are the same round, bit for bit, and with one client that round is
exactly one centralized step (tests/test_equivalence.py).

The federated DANN teacher (server/fed/teacher.py) runs on the same terms with the teacher's
own clock (teacher.epochs, its batch size) and learning rate. In edge mode a teacher round is one
step of one ensemble member, member after member (`TEACHER_ROUND`); in both mode one exchange
carries every member, each with the round's L steps, and the cloud applies each member's
combination with that member's Adam optimizers as above. The teacher's L is its own,
`fed.teacher_local_steps` (0: half the student's `fed.local_steps`, rounded up), and so is its server step,
`fed.teacher_server_step` ("same": the student's `fed.server_step`).

Record DP (`fed.dp=record`): every local step is one DP-SGD step over the node's windows, so a
round charges every node asked its L steps (`dp_steps`), a both-mode teacher round L per member
(`teacher_dp_steps`); the cloud's source steps use no target data and cost no ε.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

from shared.clock.schedules import ScheduleClock

Mode = Literal["edge", "both"]
Key = TypeVar("Key", bound=Hashable)  # how a caller names its parameters


@dataclass(frozen=True)
class LocalSteps:
    """L local steps per round; see the module docstring for what a round is."""

    count: int  # L = fed.local_steps (RoundConfig.local_steps on the wire)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"local_steps={self.count}: a round takes at least one local step")

    def first_batch(self, step: int) -> int:
        """Index of the round's first batch in the epoch's shuffle, for the round at `step`
        (`edge` mode)."""
        return step * self.count

    def moves_after(self, j: int) -> bool:
        """Whether local step j (0-based) moves the side's weights: all but the last do."""
        return j < self.count - 1

    def pseudo_gradient(self, summed: torch.Tensor) -> torch.Tensor:
        """What a side returns for one parameter, from its L local gradients summed: their
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


TEACHER_ROUND = LocalSteps(1)  # a federated DANN teacher round (edge mode): one local step


def teacher_dp_steps(members: int | None, local_steps: int) -> int:
    """DP-SGD steps one federated DANN teacher round charges each node asked, under record DP:
    one per local step of every ensemble member the round carries (both mode); edge mode
    (`members` None) one, `TEACHER_ROUND`'s."""
    if members is None:
        return TEACHER_ROUND.dp_steps()
    return members * LocalSteps(local_steps).dp_steps()


@dataclass(frozen=True)
class LocalStep:
    """Local step j of a round, on either side: where its batch, dropout draws and schedule
    values come from."""

    seed_step: int  # the global step its dropout draws are seeded by (seeding.seed_side)
    sub: int  # and their sub-stream
    epoch: int  # 1-based epoch whose shuffle holds its batch
    batch: int  # index of its batch in that shuffle (a node reads it cyclically)
    schedule: tuple[float, float] | None  # (β, α) of its own step; None: the round's values


def local_path(steps: LocalSteps, global_step: int, epoch: int, step: int,
               clock: ScheduleClock | None) -> list[LocalStep]:
    """The round's local steps from its first step. `clock` None is `edge` mode (every local
    step at the round's step, on the next batches); a clock is `both` mode (local step j IS
    step global_step + j of the run). With one local step the two agree."""
    if clock is None:
        return [LocalStep(global_step, j, epoch, steps.first_batch(step) + j, None)
                for j in range(steps.count)]
    return [LocalStep(g, 0, *clock.at(g), clock.values(g))
            for g in range(global_step, global_step + steps.count)]


@dataclass(frozen=True)
class RoundPlan:
    """Which steps of the run's clock each round covers (the module docstring)."""

    mode: Mode
    steps: LocalSteps
    total_steps: int  # T: the run's steps (edge mode: its rounds)

    @classmethod
    def of(cls, mode: Mode, local_steps: int, clock_steps: int, rounds: int = 0) -> RoundPlan:
        """The plan of a run whose clock has `clock_steps` steps; `rounds` > 0 (fed.rounds)
        runs that many rounds instead of the whole clock."""
        steps = LocalSteps(local_steps)
        if mode == "edge":
            return cls(mode, steps, rounds or clock_steps)
        return cls(mode, steps, rounds * steps.count if rounds else clock_steps)

    @property
    def both(self) -> bool:
        return self.mode == "both"

    @property
    def rounds(self) -> int:
        return math.ceil(self.total_steps / self.steps.count) if self.both else self.total_steps

    def first_step(self, rnd: int) -> int:
        """The global step of round `rnd`'s first (edge mode: only) step of the clock."""
        return (rnd - 1) * self.steps.count if self.both else rnd - 1

    def local_steps(self, rnd: int) -> LocalSteps:
        """The local steps of round `rnd`: L (both mode: fewer in a short last round)."""
        if not self.both:
            return self.steps
        return LocalSteps(min(self.steps.count, self.total_steps - self.first_step(rnd)))

    def steps_done(self, rnd: int) -> int:
        """Steps of the clock done once round `rnd` is applied."""
        return self.first_step(rnd) + (self.local_steps(rnd).count if self.both else 1)

    def ends_period(self, rnd: int, period: int) -> bool:
        """Whether a multiple of `period` steps is reached within round `rnd` (evaluation:
        an epoch of steps; checkpoints: fed.checkpoint_every). Edge mode: rnd % period == 0."""
        return self.steps_done(rnd) // period > self.first_step(rnd) // period

    def dp_steps(self, rounds: int | None = None) -> int:
        """DP-SGD steps a node asked in every one of the first `rounds` rounds (default: all)
        is charged, under record DP."""
        rounds = self.rounds if rounds is None else rounds
        return sum(self.local_steps(r).count for r in range(1, rounds + 1))


@dataclass(frozen=True)
class PathMover:
    """How a side's local path moves under `fed.local_path: preconditioned` (both mode).

    A side holds half the objective, so moving along its own gradient alone would follow
    another objective, and plain SGD at Adam's rate barely moves (the path then stays at the
    sent weights: its mean gradient is a large-batch gradient, and ceil(T/L) large steps
    undertrain and let D_d win, BENCHMARKS.md). Here each local step moves along
    g_own + `control`, the other side's latest pseudo-gradient standing in for its half (a
    control variate, as SCAFFOLD's), preconditioned like the cloud's Adam step,
    `precond` = 1 / (sqrt(v_hat) + eps) from its second moments, and clamped to [-1, 1] per
    coordinate (an Adam step moves about the learning rate per coordinate; v_hat lags the
    gradient it divides). A parameter without second moments yet (the first round) moves by
    plain SGD on g_own + control.
    """

    precond: Mapping[Hashable, torch.Tensor]
    control: Mapping[Hashable, torch.Tensor]

    def direction(self, key: Hashable, g: torch.Tensor | None) -> torch.Tensor | None:
        """The direction a local step moves parameter `key` in, from its own gradient `g`."""
        c = self.control.get(key)
        full = g if c is None else (c if g is None else g + c)
        pre = self.precond.get(key)
        if full is None or pre is None:
            return full
        return (pre * full).clamp(-1.0, 1.0)

    def keyed(self, names: Mapping[Hashable, str]) -> PathMover:
        """The same mover under a caller's own parameter keys; `names` maps each key to the
        parameter's name in the cloud's records (`records.param_name`)."""
        return PathMover({k: self.precond[n] for k, n in names.items() if n in self.precond},
                         {k: self.control[n] for k, n in names.items() if n in self.control})


def local_sgd(params: Mapping[Key, torch.Tensor], steps: LocalSteps, lr: float,
              gradient: Callable[[int], Mapping[Key, torch.Tensor | None]],
              mover: PathMover | None = None) -> dict[Key, torch.Tensor]:
    """A side's L local steps and its pseudo-gradient (the module docstring).

    `gradient(j)` forms local step j's gradient at the current weights, by parameter (None: the
    parameter got none, it counts as zero); the edge's plain and record-DP target steps and the
    cloud's source steps differ only there. After every step but the last the weights move:
    by plain SGD on that gradient, or as `mover` says (`fed.local_path: preconditioned`).
    Returns the mean gradient.
    """
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for j in range(steps.count):
        grads = gradient(j)
        with torch.no_grad():
            for k, p in params.items():
                g = grads.get(k)
                if g is not None:
                    total[k] += g
                if steps.moves_after(j):  # a local step towards the next batch
                    d = g if mover is None else mover.direction(k, g)
                    if d is not None:
                        p -= lr * d
    return {k: steps.pseudo_gradient(v) for k, v in total.items()}
