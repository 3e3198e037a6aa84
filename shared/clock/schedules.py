"""The two UNI-KD schedules, as pure functions (spec §3.2-3.3, bugs §8.3 and §8.7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

BETA_START, BETA_END = 0.1, 0.9


def kd_beta(epoch: int, num_epochs: int, natural_log: bool = True) -> float:
    """KD weight for a 1-based epoch: beta = 0.1 * exp(g * epoch).

    With the natural log g = ln(0.9/0.1)/N and beta reaches 0.9 at the last epoch, as in
    KD-STDA. The reference used log10, so beta only climbs 0.1 -> 0.26 (spec §8.3).
    """
    log = math.log if natural_log else math.log10
    g = log(BETA_END / BETA_START) / num_epochs
    return BETA_START * math.exp(g * epoch)


def grl_alpha(progress: float) -> float:
    """DANN's gradient-reversal coefficient 2/(1+exp(-10p)) - 1 for progress p."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def training_progress(step: int, epoch: int, steps_per_epoch: int, num_epochs: int,
                      ramp: bool = True) -> float:
    """p for the GRL, from a 0-based step inside a 1-based epoch.

    ramp=True: p = completed steps / total steps, in [0, 1), so alpha starts at 0.
    ramp=False: the reference's AdaTime formula p = (step + epoch*n)/N + 1/n, which is near
    or above 1 from the first step (> 1 whenever n/N + 1/n > 1), so alpha is about 1
    throughout (spec §8.7).
    """
    if ramp:
        return ((epoch - 1) * steps_per_epoch + step) / (num_epochs * steps_per_epoch)
    return (step + epoch * steps_per_epoch) / num_epochs + 1.0 / steps_per_epoch


@dataclass(frozen=True)
class ScheduleClock:
    """What any step's schedule values depend on: the clock's shape and the schedule switches.

    The centralized trainer and the cloud read these from the run config; under
    `fed.local_steps_mode: both` the round config carries them too, so each node computes the
    values of each of its local steps itself, with the same functions (`values`).
    """

    steps_per_epoch: int
    epochs: int  # distill.epochs: where the schedules end
    # the run config's defaults (distill.beta_natural_log, distill.grl_ramp: the official code's
    # schedules, issue 25's one default)
    beta_natural_log: bool = False
    grl_ramp: bool = False

    def at(self, global_step: int) -> tuple[int, int]:
        """(1-based epoch, 0-based step inside it) of a 0-based global step."""
        return global_step // self.steps_per_epoch + 1, global_step % self.steps_per_epoch

    def values(self, global_step: int) -> tuple[float, float]:
        """(β, GRL α) of a global step: `kd_beta` and `grl_alpha` as every trainer calls them."""
        epoch, step = self.at(global_step)
        return (kd_beta(epoch, self.epochs, self.beta_natural_log),
                grl_alpha(training_progress(step, epoch, self.steps_per_epoch, self.epochs,
                                            self.grl_ramp)))
