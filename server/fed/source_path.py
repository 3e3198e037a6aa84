"""The cloud's source half of a round of L > 1 steps (`fed.local_steps_mode: both`).

The cloud is one more participant, the one holding the source terms: it runs the round's L
source steps on its own copy of the weights, exactly as an edge runs its L target steps
(shared/clock/local_steps.py `local_sgd`: plain SGD between steps, the mean gradient along the
path returned). The master weights stay where the round sent them; what the path leaves on them
is its mean gradient in .grad, for the clients' target pseudo-gradients to be added to, and the
BN running statistics after its L source batches, for `compose_bn` to put before the clients'.

The expected cross KD (`distill.cross_kd: expected`) splits each step's β·w̄_t·KD_s by the
product rule. The cloud's half needs the clients' mean w, which comes with their replies, after
the path: so the path keeps the mean of d(β_j·KD_s,j) apart (`cross_grads`), and
`Cloud.finish_round` adds it times the clients' mean w over their paths. The edges' half is the
path's mean source KL (one scalar in the round config, as with one step). Exact for one step;
for L steps it is mean_j(w̄)·mean_j(d KD) instead of mean_j(w̄_j·d KD_j).

A round of one step never comes here: the cloud then runs today's single source step on the
master weights (server/fed/cloud.py `source_step`), so L = 1 is the same round bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from shared.clock.local_steps import LocalStep, LocalSteps, PathMover, local_sgd
from shared.clock.steps import EpochLog
from shared.unikd.engine import scalars

TermsAt = Callable[[nn.Module, LocalStep], dict[str, torch.Tensor]]  # one step's source terms


@dataclass
class SourcePath:
    """What the cloud's L source steps left, besides the mean gradient in .grad."""

    terms: dict[str, torch.Tensor]  # the path's mean scalars (the round's row, the cross scalar)
    cross_grads: dict[str, torch.Tensor] | None  # mean of d(β_j KD_s,j) by parameter, or None


def run_source_path(nets: nn.Module, path: list[LocalStep], lr: float,
                    terms_at: TermsAt, mover: PathMover | None = None) -> SourcePath:
    """The source steps of `path` on a copy of `nets` (the UNI-KD nets, or a DANN teacher with
    its discriminator); `nets` keeps its parameters and gets the path's mean gradient in .grad
    (None where no step gave one) and the copy's BN buffers. `mover`: how the copy moves
    between steps (keyed by `nets`' parameter names; None: plain SGD)."""
    walker = copy.deepcopy(nets)
    walker.zero_grad(set_to_none=True)
    params = dict(walker.named_parameters())
    seen: set[str] = set()
    log, cross, kd_values = EpochLog(), {}, []

    def gradient(j: int) -> dict[str, torch.Tensor]:
        walker.zero_grad(set_to_none=True)
        terms = terms_at(walker, path[j])
        has_cross = "cross_kd" in terms
        terms["loss"].backward(retain_graph=has_cross)
        grads = {k: p.grad.clone() for k, p in params.items() if p.grad is not None}
        if has_cross:  # β_j d KD_s,j, kept apart until the clients' mean w is known
            walker.zero_grad(set_to_none=True)
            (path[j].schedule[0] * terms["cross_kd"]).backward()
            for k, p in params.items():
                if p.grad is not None:
                    cross[k] = cross.get(k, 0) + p.grad / len(path)
            kd_values.append(terms["cross_kd"].item())
        seen.update(grads)
        log.add(scalars(terms))
        return grads

    mean = local_sgd(params, LocalSteps(len(path)), lr, gradient, mover)
    with torch.no_grad():
        for mine, walked in zip(nets.buffers(), walker.buffers(), strict=True):
            mine.copy_(walked)  # the L source updates of the BN running statistics
    for k, p in nets.named_parameters():
        p.grad = mean[k] if k in seen else None
    terms = {k: torch.tensor(v) for k, v in log.means().items()}
    if kd_values:
        terms["cross_kd"] = torch.tensor(sum(kd_values) / len(kd_values))
    return SourcePath(terms, cross if kd_values else None)


def add_cross_grads(nets: nn.Module, cross: dict[str, torch.Tensor], w_mean: float) -> None:
    """The cloud's half of the path's expected cross KD: w̄ times the kept mean of d(β KD_s)."""
    with torch.no_grad():
        for k, p in nets.named_parameters():
            if k in cross:
                p.grad = w_mean * cross[k] if p.grad is None else p.grad + w_mean * cross[k]
