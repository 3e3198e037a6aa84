"""The federated DANN teacher under `fed.local_steps_mode: both`: every ensemble member in each
exchange, L steps of the teacher's clock per exchange (shared/clock/local_steps.py; L is
`fed.teacher_local_steps`, by default the student's `fed.local_steps`).

A round sends all members' teachers and discriminators side by side ("<member>.<name>"); each
node trains every member's target half over the round's L steps under that member's seed
(client/node/teacher_side.py) and returns each member's pseudo-gradient. The cloud runs each
member's L source steps before the messages go (on a copy when L > 1, server/fed/source_path.py,
moving as `fed.local_path` says, exactly as the student's; the preconditioned paths' records go
down with the round), adds the member's clients' weighted mean, composes its BN statistics and
applies the sum with the member's own Adam optimizers, by L steps (server/fed/server_step.py,
`fed.teacher_server_step`, by default the student's `fed.server_step`). The
members never interact: each is trained as it would be alone, in 1/(members x L) of the
exchanges. With L = 1 and one client every member equals its centralized twin bit for bit.
The members compute on the run's device (`device`); the clients' means move there when applied
(`finish_member`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from server.fed.aggregate import add_grads, compose_bn, weighted_mean
from server.fed.cloud import SourceData
from server.fed.live_status import LiveStatus, Phase, Progress
from server.fed.server_step import adam_preconditioner, apply_server_step
from server.fed.setup import setup_config, setup_content
from server.fed.source_path import run_source_path
from server.fed.teacher_exchange import RECORDS, target_domain_loss, teacher_updates
from server.fed.transport import Sender
from server.central.teacher import new_dann_member
from shared.clock.local_steps import (LocalStep, PathMover, RoundPlan, local_path,
                                      teacher_dp_steps)
from shared.clock.schedules import ScheduleClock
from shared.clock.seeding import (SOURCE_STREAM, member_seed, seed_side)
from shared.clock.steps import batch_plan, steps_per_epoch
from shared.config import RunConfig
from shared.protocol import wire
from shared.protocol.checkpoints import by_member, of_members
from shared.protocol.records import TeacherRoundConfig, bn_buffers, to_record
from shared.protocol.reply_shapes import teacher_up_shapes
from shared.unikd.compute import module_device, resolve_device, to_device
from shared.unikd.engine import dann_source_terms
from shared.unikd.settings import DannTargetTerms
from shared.unikd.models import CNN1d

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One ensemble member on the cloud: its seed, its two nets and their optimizers."""

    seed: int
    pair: nn.ModuleDict  # "teacher", "disc"
    opts: dict[str, torch.optim.Optimizer]
    # fed.local_path=preconditioned: the last round's clients' mean target pseudo-gradient,
    # by `pair` parameter name, the stand-in for the target half on the cloud's path
    target_control: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: RunConfig, source: SourceData, seed: int) -> Member:
        """Constructed as `train_dann_teacher` constructs it (same seed, same order)."""
        teacher, disc, opts = new_dann_member(source.spec, cfg.teacher, seed,
                                              resolve_device(cfg.device))
        return cls(seed, nn.ModuleDict({"teacher": teacher, "disc": disc}), opts)

    @property
    def teacher(self) -> CNN1d:
        return self.pair["teacher"]

    def mover(self, cfg: RunConfig) -> PathMover | None:
        """How this member's local paths move (`fed.local_path`), as the student's do."""
        if cfg.fed.local_path != "preconditioned":
            return None
        return PathMover(adam_preconditioner(self.opts, dict(self.pair.named_parameters())),
                         self.target_control)


def joint_round_config(cfg: RunConfig, source: SourceData, rnd: int, plan: RoundPlan,
                       clock: ScheduleClock, members: int) -> TeacherRoundConfig:
    """Round `rnd` of the joint teacher phase: its first step, its L, the clock, every member."""
    t, first = cfg.teacher, plan.first_step(rnd)
    epoch, step = clock.at(first)
    return setup_config(cfg, source, TeacherRoundConfig, round=rnd, epoch=epoch, step=step,
                        global_step=first, batch_size=t.batch_for(source.spec),
                        alpha=clock.values(first)[1], terms=DannTargetTerms.from_config(t),
                        local_steps=plan.local_steps(rnd).count, members=members, lr=t.lr,
                        clock=clock)


def source_terms_at(cfg: RunConfig, source: SourceData, member: Member):
    """One step's DANN source half for `member`: its batch and dropout draws under its seed."""
    t = cfg.teacher

    def terms_at(pair: nn.Module, s: LocalStep) -> dict[str, torch.Tensor]:
        plan = batch_plan(member.seed, SOURCE_STREAM, s.epoch, len(source.train),
                          t.batch_for(source.spec))
        idx = plan[s.batch % len(plan)]
        seed_side(member.seed, SOURCE_STREAM, s.seed_step)
        return dann_source_terms(pair["teacher"], pair["disc"], source.train.x[idx],
                                 source.train.y[idx], s.schedule[1], t.w_cls, t.w_dom)

    return terms_at


def begin_member(cfg: RunConfig, source: SourceData, member: Member, path: list[LocalStep]
                 ) -> dict[str, torch.Tensor]:
    """A member's source half of the round, before its messages go: the source step at the sent
    weights (one step, the edge-mode round's), or the path on a copy (L steps, moving as
    `fed.local_path` says); the gradient waits in .grad. Returns the source terms (their means
    over L steps), for the log."""
    terms_at = source_terms_at(cfg, source, member)
    for o in member.opts.values():
        o.zero_grad(set_to_none=True)
    if len(path) == 1:
        terms = terms_at(member.pair, path[0])
        terms["loss"].backward()
        return terms
    return run_source_path(member.pair, path, cfg.teacher.lr, terms_at, member.mover(cfg)).terms


def finish_member(cfg: RunConfig, member: Member, steps: int,
                  grads: dict[str, dict[str, torch.Tensor]], bn: dict[str, torch.Tensor],
                  before: dict[str, torch.Tensor]) -> None:
    """Add the member's clients' weighted mean gradients (`grads`: teacher, disc) and BN
    statistics (`bn`) to its source half, and take its server step. The means arrive on the
    CPU and move to the member's device first (its path control is kept there)."""
    device = module_device(member.pair)
    grads = {name: to_device(g, device) for name, g in grads.items()}
    for name in ("teacher", "disc"):
        add_grads(dict(member.pair[name].named_parameters()), grads[name])
        member.target_control.update({f"{name}.{k}": v.clone() for k, v in grads[name].items()})
    compose_bn(member.teacher, before, bn, target_passes=steps)
    apply_server_step(member.opts, steps, cfg.fed.teacher_step_rule, lambda: None)


def abort_member(member: Member, before: dict[str, torch.Tensor]) -> None:
    """Too few replies: drop the source gradient and the BN update of its forward passes."""
    for o in member.opts.values():
        o.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buf in member.teacher.named_buffers():
            buf.copy_(before[name])


def sends_path(cfg: RunConfig, steps: int) -> bool:
    """Whether a round's messages carry the members' source halves (`path_records`)."""
    return steps > 1 and cfg.fed.local_path == "preconditioned"


def path_records(members: list[Member], cfg: RunConfig, steps: int) -> dict:
    """`fed.local_path: preconditioned`, L > 1: every member's preconditioner and source
    pseudo-gradient, for the nodes' paths (arrays "<member>.<teacher|disc>.<name>")."""
    if not sends_path(cfg, steps):
        return {}
    return {wire.PATH_PRECOND: to_record(by_member([dict(x.mover(cfg).precond) for x in members])),
            wire.PATH_CONTROL: to_record(by_member([{k: p.grad for k, p in x.pair.named_parameters()
                                                     if p.grad is not None} for x in members]))}


def federated_dann_joint(send: Sender, cfg: RunConfig, source: SourceData, nodes: list[int],
                         n_trg: int, progress: bool, privacy=None,
                         status: LiveStatus | None = None) -> list[CNN1d]:
    """Every DANN member, trained together; `privacy` as in teacher.federated_dann_member."""
    t = cfg.teacher
    members = [Member.build(cfg, source, member_seed(cfg.seed, k)) for k in range(t.ensemble)]
    m = len(members)
    spe = steps_per_epoch(len(source.train), n_trg, t.batch_for(source.spec))
    clock = ScheduleClock(spe, t.epochs, grl_ramp=cfg.distill.grl_ramp)
    plan = RoundPlan.of("both", cfg.fed.teacher_steps, spe * t.epochs)
    shapes = teacher_up_shapes(members[0].teacher, members[0].pair["disc"], m)
    status = status or LiveStatus(None)
    status.write(Phase("teacher", plan.rounds, None, m))
    for rnd in tqdm(range(1, plan.rounds + 1), desc=f"federated DANN teacher ({m} members)",
                    disable=None if progress else True, dynamic_ncols=True):
        rc = joint_round_config(cfg, source, rnd, plan, clock, m)
        if privacy is not None:
            rc.dp_noise = privacy.plan.noise_multiplier
        content = setup_content(cfg, source, rc)  # the weights as they are, BN buffers included
        content[wire.TEACHER_TRAIN] = to_record(by_member([x.teacher.state_dict()
                                                           for x in members]))
        content[wire.TEACHER_DISC] = to_record(by_member([x.pair["disc"].state_dict()
                                                          for x in members]))
        before = [{k: v.clone() for k, v in bn_buffers(x.teacher, "").items()} for x in members]
        path = local_path(plan.local_steps(rnd), rc.global_step, rc.epoch, rc.step, clock)
        terms: list[dict] = []

        def source_halves() -> None:
            terms.extend(begin_member(cfg, source, x, path) for x in members)

        first = sends_path(cfg, len(path))  # the messages carry what the source halves leave
        if first:
            source_halves()
            content.update(path_records(members, cfg, len(path)))
        # Otherwise the messages do not depend on the source halves (the weights were copied
        # into `content` above), so the cloud computes them while the nodes compute theirs.
        updates = teacher_updates(send, nodes, content, rnd, shapes, cfg.fed.min_clients,
                                  privacy, (rnd, teacher_dp_steps(m, rc.local_steps)),
                                  meanwhile=(lambda: None) if first else source_halves)
        status.progress(Progress("teacher", rnd, plan.rounds, send.exchanges))
        if updates is None:  # nothing moves, BN statistics included
            for x, b in zip(members, before):
                abort_member(x, b)
            continue
        mean = {key: of_members(weighted_mean(updates, key), m) for key in RECORDS}
        for k, x in enumerate(members):
            finish_member(cfg, x, len(path), {"teacher": mean[wire.TEACHER_GRAD][k],
                                              "disc": mean[wire.TEACHER_DISC_GRAD][k]},
                          mean[wire.TEACHER_BN][k], before[k])
        if plan.ends_period(rnd, 10 * spe) or rnd == plan.rounds:
            trg = target_domain_loss(updates)  # the nodes' mean over the members
            log.info("[TEACHER %d/%d] epoch %d/%d  source CE %s  source domain %s  target "
                     "domain %s", rnd, plan.rounds, clock.at(plan.steps_done(rnd) - 1)[0],
                     t.epochs, " ".join(f"{x['ce'].item():.3f}" for x in terms),
                     " ".join(f"{x['dom'].item():.3f}" for x in terms),
                     "n/a" if trg is None else f"{trg:.3f}")
    return [x.teacher.eval() for x in members]
