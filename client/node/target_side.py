"""The edge's share of a UNI-KD round: target-side terms on private windows (spec §9).

With `local_steps` = L the client takes L local steps on the target terms (`local_sgd`) and
returns the pseudo-gradient, the mean gradient along its path; shared/clock/local_steps.py says
what a round is, and `round_path` which batch, dropout draws and schedule values each local step
takes. For L = 1 that is exactly the gradient at the received weights, which the cloud adds to
its source gradient: one round is then one centralized step. The node's other tensor math lives
here too: re-estimating BN statistics on its windows (`reestimate_bn`).
"""

from __future__ import annotations

import dataclasses

import torch

from shared.unikd.compute import module_device, on
from shared.unikd.engine import TeacherOut, UniKDNets, dann_target_terms, scalars, target_terms
from shared.unikd.settings import StepSchedule
from shared.unikd.models import CNN1d, DomainDisc
from shared.protocol import wire
from shared.protocol.records import (RoundConfig, SetupConfig, TeacherRoundConfig, bn_buffers,
                                     group_named_params, param_name)
from shared.clock.seeding import augment_generator, client_stream, member_seed, seed_side
from shared.clock.local_steps import LocalStep, LocalSteps, PathMover, local_path, local_sgd
from shared.clock.steps import EpochLog, batch_plan

Grads = dict[str, dict[str, torch.Tensor]]


def round_path(rc: SetupConfig) -> list[LocalStep]:
    """The round's local steps (shared/clock/local_steps.py): under `both` mode each is a step of
    the run's clock with its own batch, dropout draws and schedule values."""
    clock = getattr(rc, "clock", None)  # only a UNI-KD round may carry one
    return local_path(LocalSteps(rc.local_steps), rc.global_step, rc.epoch, rc.step, clock)


def _local_batches(rc: SetupConfig, client: int, n: int) -> list[torch.Tensor]:
    """The batches of this round's local steps, each from its epoch's shuffle (edge mode:
    batches step*K .. step*K+K-1 of this epoch's shuffle).

    The epoch's permutation is read cyclically, so a client holding fewer windows than the
    round count needs still sees all of them, not one batch again and again. Within the first
    n // batch_size batches this is exactly the centralized `epoch_batches` plan.
    """
    bs, perms = min(rc.batch_size, n), {}
    out = []
    for s in round_path(rc):
        if s.epoch not in perms:  # one shuffle per epoch
            perms[s.epoch] = torch.cat(batch_plan(rc.seed, client_stream(client), s.epoch, n, n))
        out.append(perms[s.epoch][torch.arange(s.batch * bs, (s.batch + 1) * bs) % n])
    return out


def step_schedule(rc: RoundConfig, s: LocalStep) -> StepSchedule:
    """A local step's schedule values: its own under `both` mode, else the round's."""
    return rc.schedule if s.schedule is None else StepSchedule(*s.schedule)


def unikd_round(nets: UniKDNets, x: torch.Tensor, teacher: TeacherOut | None, rc: RoundConfig,
                client: int, prototypes: torch.Tensor | None = None,
                mover: PathMover | None = None
                ) -> tuple[Grads, dict[str, torch.Tensor], dict[str, float]]:
    """Returns (pseudo-gradients by group, BN buffers, mean metrics). `prototypes`: the
    cloud's per-class teacher features for the hint when the teacher stays in the cloud;
    `mover`: how the local path moves (`path_mover`; None: plain SGD)."""
    groups = group_named_params(nets)
    params = {(g, k): p for g, ps in groups.items() for k, p in ps.items()}
    path, batches = round_path(rc), _local_batches(rc, client, len(x))
    log = EpochLog()
    nets.train()

    def gradient(j: int) -> dict[tuple[str, str], torch.Tensor | None]:
        idx, s = batches[j], path[j]
        for p in params.values():
            p.grad = None
        seed_side(rc.seed, client_stream(client), s.seed_step, sub=s.sub)
        terms = target_terms(nets, x[idx], teacher[idx] if teacher is not None else None,
                             step_schedule(rc, s), rc.hparams, source_kd=rc.source_kd,
                             prototypes=prototypes,
                             augment=augment_generator(rc.seed, client_stream(client),
                                                       s.seed_step, sub=s.sub))
        terms["loss"].backward()
        log.add(scalars(terms))
        return {key: p.grad for key, p in params.items()}

    if mover is not None:
        mover = mover.keyed({key: param_name(*key) for key in params})
    mean = local_sgd(params, LocalSteps(rc.local_steps), rc.lr, gradient, mover)
    grads = {g: {k: mean[(g, k)] for k in ps} for g, ps in groups.items()}
    return grads, bn_buffers(nets.student), log.means()


def dann_round(teacher: CNN1d, disc: DomainDisc, x: torch.Tensor, rc: TeacherRoundConfig,
               client: int, mover: PathMover | None = None
               ) -> tuple[Grads, dict[str, torch.Tensor], dict[str, float]]:
    """Federated DANN pre-training: the target half of the domain loss, for teacher and disc,
    over the round's local steps (one in edge mode), each at its own GRL α; `mover` keyed
    "teacher.<name>" / "disc.<name>" (None: plain SGD)."""
    path, batches = round_path(rc), _local_batches(rc, client, len(x))
    teacher.train()
    disc.train()
    params = {**{("teacher", k): p for k, p in teacher.named_parameters()},
              **{("disc", k): p for k, p in disc.named_parameters()}}
    log = EpochLog()

    def gradient(j: int) -> dict[tuple[str, str], torch.Tensor | None]:
        s = path[j]
        teacher.zero_grad(set_to_none=True)
        disc.zero_grad(set_to_none=True)
        seed_side(rc.seed, client_stream(client), s.seed_step, sub=s.sub)
        terms = dann_target_terms(teacher, disc, x[batches[j]], step_alpha(rc, s), rc.terms)
        terms["loss"].backward()
        log.add({wire.TEACHER_DANN_DOM: terms["dom"].item()})
        return {key: p.grad for key, p in params.items()}

    if mover is not None:
        mover = mover.keyed({key: f"{key[0]}.{key[1]}" for key in params})
    mean = local_sgd(params, LocalSteps(rc.local_steps), rc.lr or 0.0, gradient, mover)
    grads = {"teacher": {k: mean[("teacher", k)] for k, _ in teacher.named_parameters()},
             "disc": {k: mean[("disc", k)] for k, _ in disc.named_parameters()}}
    return grads, bn_buffers(teacher, ""), log.means()


def step_alpha(rc: TeacherRoundConfig, s: LocalStep) -> float:
    """A teacher round's local step's GRL α: its own under `both` mode, else the round's."""
    return rc.alpha if s.schedule is None else s.schedule[1]


def member_config(rc: TeacherRoundConfig, member: int) -> TeacherRoundConfig:
    """The round as ensemble member `member` trains it: under its own seed (its batches and
    dropout draws) where one exchange carries every member; edge mode: the round itself."""
    if rc.members is None:
        return rc
    return dataclasses.replace(rc, seed=member_seed(rc.seed, member))


@torch.no_grad()
def reestimate_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Recompute BN running statistics on local windows (cumulative average, eval afterwards),
    on the model's device."""
    device = module_device(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), 256):
        model(on(device, x[i:i + 256]))
    model.eval()
