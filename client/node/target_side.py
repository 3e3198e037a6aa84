"""The edge's share of a UNI-KD round: target-side terms on private windows (spec §9).

With `local_steps` = L the client takes L local steps on the target terms (`local_sgd`) and
returns the pseudo-gradient, the mean gradient along its path; shared/clock/local_steps.py says
what a round is. For L = 1 that is exactly the gradient at the received weights, which the cloud
adds to its source gradient: one round is then one centralized step. The node's other tensor
math lives here too: re-estimating BN statistics on its windows (`reestimate_bn`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

import torch

from shared.unikd.engine import TeacherOut, UniKDNets, dann_target_terms, scalars, target_terms
from shared.unikd.models import CNN1d, DomainDisc
from shared.protocol import wire
from shared.protocol.records import (RoundConfig, SetupConfig, TeacherRoundConfig, bn_buffers,
                                     group_named_params)
from shared.clock.seeding import augment_generator, client_stream, seed_side
from shared.clock.local_steps import LocalSteps
from shared.clock.steps import EpochLog, batch_plan

Grads = dict[str, dict[str, torch.Tensor]]
Key = TypeVar("Key", bound=Hashable)  # how a caller names its parameters


def _local_batches(rc: SetupConfig, client: int, n: int) -> list[torch.Tensor]:
    """The K batches of this round: batches step*K .. step*K+K-1 of this epoch's shuffle.

    The epoch's permutation is read cyclically, so a client holding fewer windows than the
    round count needs still sees all of them, not one batch again and again. Within the first
    n // batch_size batches this is exactly the centralized `epoch_batches` plan.
    """
    steps = LocalSteps(rc.local_steps)
    perm = torch.cat(batch_plan(rc.seed, client_stream(client), rc.epoch, n, n))  # one shuffle
    bs = min(rc.batch_size, n)
    first = steps.first_batch(rc.step) * bs
    return [perm[torch.arange(first + j * bs, first + (j + 1) * bs) % n]
            for j in range(steps.count)]


def local_sgd(params: Mapping[Key, torch.Tensor], steps: LocalSteps, lr: float,
              gradient: Callable[[int], Mapping[Key, torch.Tensor | None]]
              ) -> dict[Key, torch.Tensor]:
    """The edge's L local steps and its pseudo-gradient (shared/clock/local_steps.py).

    `gradient(j)` forms local step j's gradient at the current weights, by parameter (None: the
    parameter got none, it counts as zero); plain and record-DP target steps differ only there.
    After every step but the last the weights move by plain SGD. Returns the mean gradient.
    """
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for j in range(steps.count):
        grads = gradient(j)
        with torch.no_grad():
            for k, p in params.items():
                g = grads.get(k)
                if g is not None:
                    total[k] += g
                    if steps.moves_after(j):
                        p -= lr * g  # local SGD step towards the next batch
    return {k: steps.pseudo_gradient(v) for k, v in total.items()}


def unikd_round(nets: UniKDNets, x: torch.Tensor, teacher: TeacherOut | None, rc: RoundConfig,
                client: int, prototypes: torch.Tensor | None = None
                ) -> tuple[Grads, dict[str, torch.Tensor], dict[str, float]]:
    """Returns (pseudo-gradients by group, BN buffers, mean metrics). `prototypes`: the
    cloud's per-class teacher features for the hint when the teacher stays in the cloud."""
    groups = group_named_params(nets)
    params = {(g, k): p for g, ps in groups.items() for k, p in ps.items()}
    batches = _local_batches(rc, client, len(x))
    log = EpochLog()
    nets.train()

    def gradient(j: int) -> dict[tuple[str, str], torch.Tensor | None]:
        idx = batches[j]
        for p in params.values():
            p.grad = None
        seed_side(rc.seed, client_stream(client), rc.global_step, sub=j)
        terms = target_terms(nets, x[idx], teacher[idx] if teacher is not None else None,
                             rc.schedule, rc.hparams, source_kd=rc.source_kd,
                             prototypes=prototypes,
                             augment=augment_generator(rc.seed, client_stream(client),
                                                       rc.global_step, sub=j))
        terms["loss"].backward()
        log.add(scalars(terms))
        return {key: p.grad for key, p in params.items()}

    mean = local_sgd(params, LocalSteps(rc.local_steps), rc.lr, gradient)
    grads = {g: {k: mean[(g, k)] for k in ps} for g, ps in groups.items()}
    return grads, bn_buffers(nets.student), log.means()


def dann_round(teacher: CNN1d, disc: DomainDisc, x: torch.Tensor, rc: TeacherRoundConfig,
               client: int, w_dom: float = 1.0
               ) -> tuple[Grads, dict[str, torch.Tensor], dict[str, float]]:
    """Federated DANN pre-training: the target half of the domain loss, for teacher and disc."""
    idx = _local_batches(rc, client, len(x))[0]
    teacher.train()
    disc.train()
    teacher.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)
    seed_side(rc.seed, client_stream(client), rc.global_step)
    terms = dann_target_terms(teacher, disc, x[idx], rc.alpha, w_dom)
    terms["loss"].backward()

    def grads(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                for k, p in m.named_parameters()}

    return ({"teacher": grads(teacher), "disc": grads(disc)}, bn_buffers(teacher, ""),
            {wire.TEACHER_DANN_DOM: terms["dom"].item()})


@torch.no_grad()
def reestimate_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Recompute BN running statistics on local windows (cumulative average, eval afterwards)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), 256):
        model(x[i:i + 256])
    model.eval()
