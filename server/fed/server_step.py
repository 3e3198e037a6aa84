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
- `sqrt-lr`: L Adam steps on pg, each with the learning rate / sqrt(L). pg is a gradient over L
  batches, so its noise is 1/sqrt(L) of one batch's: where the noise dominates (most of
  training), Adam's normalised step follows pg's sign far more consistently than the
  centralized steps follow their batches', and L steps at the full rate travel about sqrt(L)
  times as far as L centralized steps, drift and noise alike. The square-root scaling rule of
  adaptive methods for an L times larger batch (Malladi et al., NeurIPS 2022: rate x sqrt(L),
  1 - β x L) restores the distance; L repeated updates of the moments with one gradient give
  the β part by themselves (1 - β^L is about L (1 - β)).

A round of one step is one plain Adam step either way: today's round, bit for bit. The
student's EMA (distill.ema_decay, per step) is folded in once per step the round advances.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from shared.unikd.engine import step_all

ServerStep = str  # "repeat" | "scaled-lr" | "sqrt-lr" (FedConfig.server_step)


def adam_preconditioner(opts: dict[str, torch.optim.Optimizer],
                        params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """1 / (sqrt(v_hat) + eps) by parameter name, from the optimizers' bias-corrected second
    moments: how the next Adam step scales each coordinate (`fed.local_path: preconditioned`
    moves the local paths with it). Parameters no step has touched yet are left out."""
    out = {}
    for name, p in params.items():
        for o in opts.values():
            state = o.state.get(p)
            if state and "exp_avg_sq" in state:
                group = next(g for g in o.param_groups if any(q is p for q in g["params"]))
                v_hat = state["exp_avg_sq"] / (1 - group["betas"][1] ** float(state["step"]))
                out[name] = 1.0 / (v_hat.sqrt() + group["eps"])
    return out


def apply_server_step(opts: dict[str, torch.optim.Optimizer], steps: int, how: ServerStep,
                      after_step: Callable[[], None]) -> None:
    """Advance the weights by `steps` steps on the gradients in .grad; `after_step` runs once
    per step advanced (the EMA update)."""
    if steps == 1:
        step_all(opts)
        after_step()
        return
    if how not in ("repeat", "scaled-lr", "sqrt-lr"):
        raise ValueError(f"fed.server_step={how!r}: expected repeat, scaled-lr or sqrt-lr")
    scale = {"repeat": 1.0, "scaled-lr": float(steps), "sqrt-lr": 1.0 / math.sqrt(steps)}[how]
    saved = [[g["lr"] for g in o.param_groups] for o in opts.values()]
    for o in opts.values():
        for g in o.param_groups:
            g["lr"] = g["lr"] * scale
    try:
        for _ in range(1 if how == "scaled-lr" else steps):
            step_all(opts)
            if how != "scaled-lr":
                after_step()
    finally:
        for o, lrs in zip(opts.values(), saved):
            for g, lr in zip(o.param_groups, lrs):
                g["lr"] = lr
    if how == "scaled-lr":
        for _ in range(steps):
            after_step()
