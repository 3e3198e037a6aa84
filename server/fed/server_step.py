"""How the cloud applies a round's combined pseudo-gradient: its Adam optimizers as the server
optimizer (FedOpt), sized so that a round of L steps advances about L steps (`fed.server_step`).

The pseudo-gradient pg is the mean over the round's steps of the centralized objective's
gradient (shared/clock/local_steps.py). Adam's step is invariant to the gradient's scale, so
multiplying pg by L would change nothing; the step itself must grow:

- `repeat`: L Adam steps, each on pg (its weight decay read at the moving weights). The moments
  see L updates per round, as many as the centralized run's, so β1, β2 and the bias correction
  keep their per-step meaning; the weights move about L·lr along pg's sign.
- `scaled-lr`: one Adam step with the learning rate times L. The moments see one update per
  round: their horizon, counted in rounds, spans L times as many steps.

A round of one step is one plain Adam step either way: today's round, bit for bit. The
student's EMA (distill.ema_decay, per step) is folded in once per step the round advances.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from shared.unikd.engine import step_all

ServerStep = str  # "repeat" | "scaled-lr" (FedConfig.server_step)


def apply_server_step(opts: dict[str, torch.optim.Optimizer], steps: int, how: ServerStep,
                      after_step: Callable[[], None]) -> None:
    """Advance the weights by `steps` steps on the gradients in .grad; `after_step` runs once
    per step advanced (the EMA update)."""
    if steps == 1:
        step_all(opts)
        after_step()
        return
    if how == "repeat":
        for _ in range(steps):
            step_all(opts)
            after_step()
        return
    if how != "scaled-lr":
        raise ValueError(f"fed.server_step={how!r}: expected 'repeat' or 'scaled-lr'")
    saved = [[g["lr"] for g in o.param_groups] for o in opts.values()]
    for o in opts.values():
        for g in o.param_groups:
            g["lr"] = g["lr"] * steps
    try:
        step_all(opts)
    finally:
        for o, lrs in zip(opts.values(), saved):
            for g, lr in zip(o.param_groups, lrs):
                g["lr"] = lr
    for _ in range(steps):
        after_step()
