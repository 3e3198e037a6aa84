"""The edge's share of a UNI-KD round: target-side terms on private windows (spec §9).

With `local_steps` = K the client takes K plain-SGD steps on the target terms and returns the
pseudo-gradient mean_j g_j, the average gradient along its path. For K = 1 that is exactly
the gradient at the received weights, which the cloud adds to its source gradient: one round
is then one centralized step.
"""

from __future__ import annotations

import torch

from shared.unikd.engine import TeacherOut, UniKDNets, dann_target_terms, scalars, target_terms
from shared.unikd.models import CNN1d, DomainDisc
from shared.protocol.records import (RoundConfig, SetupConfig, TeacherRoundConfig, bn_buffers,
                                     group_named_params)
from shared.clock.seeding import client_stream
from shared.clock.steps import EpochLog, batch_plan, seed_side

Grads = dict[str, dict[str, torch.Tensor]]


def _local_batches(rc: SetupConfig, client: int, n: int) -> list[torch.Tensor]:
    """The K batches of this round: batches step*K .. step*K+K-1 of this epoch's shuffle.

    The epoch's permutation is read cyclically, so a client holding fewer windows than the
    round count needs still sees all of them, not one batch again and again. Within the first
    n // batch_size batches this is exactly the centralized `epoch_batches` plan.
    """
    perm = torch.cat(batch_plan(rc.seed, client_stream(client), rc.epoch, n, n))  # one shuffle
    bs = min(rc.batch_size, n)
    first = rc.step * rc.local_steps * bs
    return [perm[torch.arange(first + j * bs, first + (j + 1) * bs) % n]
            for j in range(rc.local_steps)]


def unikd_round(nets: UniKDNets, x: torch.Tensor, teacher: TeacherOut | None, rc: RoundConfig,
                client: int, prototypes: torch.Tensor | None = None
                ) -> tuple[Grads, dict[str, torch.Tensor], dict[str, float]]:
    """Returns (pseudo-gradients by group, BN buffers, mean metrics). `prototypes`: the
    cloud's per-class teacher features for the hint when the teacher stays in the cloud."""
    groups = group_named_params(nets)
    total: Grads = {g: {k: torch.zeros_like(p) for k, p in ps.items()} for g, ps in groups.items()}
    log = EpochLog()
    nets.train()
    for j, idx in enumerate(_local_batches(rc, client, len(x))):
        for ps in groups.values():
            for p in ps.values():
                p.grad = None
        seed_side(rc.seed, client_stream(client), rc.global_step, sub=j)
        terms = target_terms(nets, x[idx], teacher[idx] if teacher is not None else None,
                             rc.schedule, rc.hparams, source_kd=rc.source_kd,
                             prototypes=prototypes)
        terms["loss"].backward()
        log.add(scalars(terms))
        with torch.no_grad():
            for g, ps in groups.items():
                for k, p in ps.items():
                    if p.grad is not None:
                        total[g][k] += p.grad
                        if j < rc.local_steps - 1:
                            p -= rc.lr * p.grad  # local SGD step towards the next batch
    grads = {g: {k: v / rc.local_steps for k, v in gs.items()} for g, gs in total.items()}
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
            {"teacher-dann-dom": terms["dom"].item()})
