"""Federated DANN pre-training of the teacher (spec §9.2): the same split as UNI-KD.

The cloud runs source CE and the source half of the domain loss; each edge returns the gradient
of the target half for the teacher and its discriminator. With one client this reproduces
`server.central.teacher.train_dann_teacher` step for step. This module trains the members one
after the other, one step per round (edge mode); `fed.local_steps_mode: both` trains them all
in each round of L steps (server/fed/teacher_joint.py). The cloud's half computes on the run's
device (`device`); the teacher is built on the CPU under its seed, then moved there.
"""

from __future__ import annotations

import logging

from tqdm import tqdm

from server.fed.aggregate import add_grads, compose_bn, weighted_mean
from server.fed.cloud import SourceData
from server.fed.live_status import LiveStatus, Phase, Progress
from server.fed.setup import setup_config, setup_content
from server.fed.teacher_exchange import target_domain_loss, teacher_updates
from server.fed.transport import Sender
from server.central.teacher import new_dann_member
from shared.protocol import wire
from shared.config import RunConfig
from shared.unikd.compute import resolve_device
from shared.unikd.engine import dann_source_terms
from shared.unikd.settings import DannTargetTerms
from shared.unikd.models import TeacherEnsemble
from shared.protocol.records import TeacherRoundConfig, bn_buffers, to_record
from shared.protocol.reply_shapes import teacher_up_shapes
from shared.clock.local_steps import TEACHER_ROUND
from shared.clock.schedules import grl_alpha, training_progress
from shared.clock.seeding import SOURCE_STREAM, member_seed, seed_side
from shared.clock.steps import batch_plan, steps_per_epoch

log = logging.getLogger(__name__)


def teacher_round_config(cfg: RunConfig, source: SourceData, seed: int, rnd: int,
                         steps_per_epoch: int) -> TeacherRoundConfig:
    """Round `rnd` of training the DANN member seeded `seed`: its step, GRL α and domain weight.

    The cloud's half of the round reads the same values (epoch, step, alpha)."""
    t = cfg.teacher
    epoch, step = (rnd - 1) // steps_per_epoch + 1, (rnd - 1) % steps_per_epoch
    alpha = grl_alpha(training_progress(step, epoch, steps_per_epoch, t.epochs,
                                        cfg.distill.grl_ramp))
    return setup_config(cfg, source, TeacherRoundConfig, round=rnd, seed=seed, epoch=epoch,
                        step=step, global_step=rnd - 1, batch_size=t.batch_for(source.spec),
                        alpha=alpha, terms=DannTargetTerms.from_config(t))


def federated_dann_member(send: Sender, cfg: RunConfig, source: SourceData, nodes: list[int],
                          n_trg: int, seed: int, progress: bool, privacy=None,
                          first_round: int = 1, status: LiveStatus | None = None,
                          member: int | None = None):
    """One DANN teacher. `privacy` (a RecordLedger, record DP only): the nodes run per-window
    DP-SGD, send no BN statistics, are weighted by their released counts and charged per round;
    `first_round` numbers the rounds of this member in that ledger. `status` gets the member's
    progress (server/fed/live_status.py)."""
    tcfg, spec = cfg.teacher, source.spec
    teacher, disc, opts = new_dann_member(spec, tcfg, seed, resolve_device(cfg.device))
    spe = steps_per_epoch(len(source.train), n_trg, tcfg.batch_for(spec))
    total = spe * tcfg.epochs
    shapes = teacher_up_shapes(teacher, disc)
    status = status or LiveStatus(None)
    status.write(Phase("teacher", total, member, tcfg.ensemble))
    for rnd in tqdm(range(1, total + 1), desc=f"federated DANN teacher (seed {seed})",
                    disable=None if progress else True, dynamic_ncols=True):
        rc = teacher_round_config(cfg, source, seed, rnd, spe)
        epoch, step = rc.epoch, rc.step
        if privacy is not None:
            rc.dp_noise = privacy.plan.noise_multiplier
        content = setup_content(cfg, source, rc)
        content[wire.TEACHER_TRAIN] = to_record(teacher.state_dict())
        content[wire.TEACHER_DISC] = to_record(disc.state_dict())
        before = {k: v.clone() for k, v in bn_buffers(teacher, "").items()}
        updates = teacher_updates(send, nodes, content, rnd, shapes, cfg.fed.min_clients,
                                  privacy, (first_round + rnd - 1, TEACHER_ROUND.dp_steps()))
        status.progress(Progress("teacher", rnd, total, send.exchanges, member))
        if updates is None:
            continue
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        plan = batch_plan(seed, SOURCE_STREAM, epoch, len(source.train), tcfg.batch_for(spec))
        idx = plan[step % len(plan)]
        seed_side(seed, SOURCE_STREAM, rnd - 1)
        terms = dann_source_terms(teacher, disc, source.train.x[idx], source.train.y[idx],
                                  rc.alpha, tcfg.w_cls, rc.terms.w_dom)
        terms["loss"].backward()
        for module, key in ((teacher, wire.TEACHER_GRAD), (disc, wire.TEACHER_DISC_GRAD)):
            add_grads(dict(module.named_parameters()), weighted_mean(updates, key))
        compose_bn(teacher, before, weighted_mean(updates, wire.TEACHER_BN))
        for o in opts.values():
            o.step()
        if step == spe - 1 and (epoch % 10 == 0 or epoch == tcfg.epochs):
            trg = target_domain_loss(updates)
            log.info("[TEACHER %d/%d] epoch %d/%d  source CE %.3f  domain: source %.3f, target %s",
                     rnd, total, epoch, tcfg.epochs, terms["ce"].item(), terms["dom"].item(),
                     "n/a" if trg is None else f"{trg:.3f}")
    return teacher.eval()


def federated_dann_teacher(send: Sender, cfg: RunConfig, source: SourceData, nodes: list[int],
                           n_trg: int, progress: bool = True, privacy=None,
                           status: LiveStatus | None = None):
    """The teacher: member after member, a step per round (edge mode), or every member in each
    round of L steps (`fed.local_steps_mode: both`, server/fed/teacher_joint.py)."""
    if cfg.fed.local_steps_mode == "both":
        from server.fed.teacher_joint import federated_dann_joint

        members = federated_dann_joint(send, cfg, source, nodes, n_trg, progress, privacy,
                                       status)
        return members[0] if len(members) == 1 else TeacherEnsemble(members)
    per_member = steps_per_epoch(len(source.train), n_trg,
                                 cfg.teacher.batch_for(source.spec)) * cfg.teacher.epochs
    members = [federated_dann_member(send, cfg, source, nodes, n_trg,
                                     member_seed(cfg.seed, k), progress, privacy,
                                     1 + k * per_member, status, k)
               for k in range(cfg.teacher.ensemble)]
    return members[0] if len(members) == 1 else TeacherEnsemble(members)
