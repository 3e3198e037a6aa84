"""Record-level DP on the edge (`fed.dp: record`): per-window DP-SGD for UNI-KD and DANN rounds.

Every local step is one DP-SGD step of shared/privacy/dp_sgd.py over the node's private windows:
Poisson batch with rate q = B / ñ, per-window gradients of the target-side loss over student,
adapter, D_f and D_d together (one clipping bound C), BatchNorm frozen at the statistics the
cloud sent, N(0, (z C)^2) on the sum, divided by the expected batch size. The federated DANN
teacher's target half gets the same treatment over teacher + discriminator parameters.

What leaves the node under record DP: the noisy gradients (post-processing of the DP-SGD
steps), the released window count ñ (noised once, accounted) and the round's bookkeeping
(client id, round, local steps). No BN statistics, no losses, no w_mean metric. Under the
expected cross KD (`rc.w_share`) each window's confusion weight w_i in [0, 1] rides inside its
clipped vector (shared/privacy/dp_sgd.py): the node sends the noised coordinate, an estimate of
sqrt(share) C times its mean w, as the record wire.TARGET_W, at no extra epsilon.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from shared.privacy.dp_sgd import (BOUNDED, dp_generator, dp_sgd_gradient, frozen_bn,
                                   noisy_count, sampling_rate)
from shared.unikd.engine import (KDHparams, StepSchedule, TeacherOut, UniKDNets, dann_target_terms,
                           target_terms)
from shared.unikd.models import CNN1d, DomainDisc
from shared.unikd.settings import DannTargetTerms, batch_coupling
from shared.clock.local_steps import LocalSteps, PathMover, local_sgd
from client.node.node_config import NodeConfig, read_node_config
from client.node.target_side import round_path, step_alpha, step_schedule
from shared.protocol.records import RoundConfig, SetupConfig, TeacherRoundConfig
from shared.clock.seeding import (DP_COUNT, DP_POISSON, DP_STEP_NOISE, PHASE_TEACHER, PHASE_UNIKD,
                                  augment_generator, client_stream, record_dp_offset, seed_side)

Grads = dict[str, dict[str, torch.Tensor]]
SECRET_KEY = "dp-secret"  # context.state ConfigRecord key of the node's noise secret
COUNT_KEY = "dp-count"  # context.state ConfigRecord key of the node's released window count


def node_secret(node_config: NodeConfig | Mapping[str, object], state) -> bytes | None:
    """The node's private randomness key; None (reproducible draws) only if the node config
    says `dp-reproducible` (the in-process simulation, where cloud and nodes share a process)."""
    if read_node_config(node_config).dp_reproducible:
        return None
    if SECRET_KEY not in state:
        from flwr.app import ConfigRecord

        state[SECRET_KEY] = ConfigRecord({"hex": os.urandom(32).hex()})
    return bytes.fromhex(str(state[SECRET_KEY]["hex"]))


def released_count(n: int, rc: SetupConfig, client: int, secret: bytes | None,
                   state=None) -> int:
    """ñ = n + round(N(0, s^2)): the only form of the window count that leaves the node.

    Drawn once (the round-0 query) and kept in `state`, so every later round and phase reuses
    the same released value: repeating it releases nothing new, and the node's Poisson rate
    B / ñ is the one the cloud accounts for.
    """
    if state is not None and COUNT_KEY in state:
        return int(state[COUNT_KEY]["count"])
    gen = dp_generator(rc.seed, client_stream(client), 0, DP_COUNT.number(), secret)
    count = noisy_count(n, rc.dp_count_std, gen)
    if state is not None:
        from flwr.app import ConfigRecord

        state[COUNT_KEY] = ConfigRecord({"count": count})
    return count


class TargetLoss(nn.Module):
    """The UNI-KD target-side loss of a batch, as a module (torch.func needs one).

    `augment` is the current local step's augmentation generator (pseudo-label term); under
    vmap it draws a different strong view for every window."""

    def __init__(self, nets: UniKDNets, sched: StepSchedule, hp: KDHparams,
                 prototypes: torch.Tensor | None = None):
        super().__init__()
        self.nets, self.sched, self.hp, self.prototypes = nets, sched, hp, prototypes
        self.augment: torch.Generator | None = None
        self.with_w = False  # forward returns (loss, mean w) for the w coordinate

    def forward(self, x: torch.Tensor, feat: torch.Tensor | None = None,
                logits: torch.Tensor | None = None):
        teacher = TeacherOut(feat, logits) if feat is not None else None
        t = target_terms(self.nets, x, teacher, self.sched, self.hp, prototypes=self.prototypes,
                         augment=self.augment)
        return (t["loss"], t["w_mean"]) if self.with_w else t["loss"]



class DannTargetLoss(nn.Module):
    """The target half of the DANN domain loss, as a module."""

    def __init__(self, teacher: CNN1d, disc: DomainDisc, alpha: float, weights: DannTargetTerms):
        super().__init__()
        self.teacher, self.disc, self.alpha, self.weights = teacher, disc, alpha, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dann_target_terms(self.teacher, self.disc, x, self.alpha, self.weights)["loss"]


def _wire_groups(flat: dict[str, torch.Tensor]) -> Grads:
    """'nets.student.X' -> student/'student.X', 'nets.d_f.X' -> d_f/'X' (wire names)."""
    out: Grads = {"student": {}, "d_f": {}, "d_d": {}}
    for name, g in flat.items():
        _, member, rest = name.split(".", 2)
        if member in ("student", "adapter"):
            out["student"][f"{member}.{rest}"] = g
        else:
            out[member][rest] = g
    return out


def _dp_step(loss: nn.Module, data: tuple[torch.Tensor, ...], rc: SetupConfig, client: int,
             secret: bytes | None, released: int, phase: int, sub: int, w_share: float = 0.0
             ) -> dict[str, torch.Tensor]:
    """One DP-SGD step. With `rc.dp_shares`: no noise here (the node adds its 1/t share at SecAgg's mask
    stage, client/node/secagg.py) and the sum is divided by the batch size B itself, the same
    public divisor on every node, so the survivors' summed noise covers any node's window."""
    q, shares = sampling_rate(rc.batch_size, released), rc.dp_shares
    stream, offset = client_stream(client), record_dp_offset(sub, phase)
    grads, _ = dp_sgd_gradient(
        loss, data, q, rc.dp_clip, 0.0 if shares else rc.dp_noise,
        rc.batch_size if shares else q * released,
        dp_generator(rc.seed, stream, rc.global_step, DP_POISSON.number(offset), secret),
        dp_generator(rc.seed, stream, rc.global_step, DP_STEP_NOISE.number(offset), secret),
        before_forward=lambda: seed_side(rc.seed, stream, rc.global_step, sub=sub),
        group_of=network_of if rc.dp_clip_scope == "per-network" else None, share=w_share)
    return grads


def network_of(name: str) -> str:
    """The network a loss module's parameter belongs to, for per-network clipping: the student
    and its adapter are one network ('nets.student.X', 'nets.adapter.X'), D_f and D_d one each
    ('nets.d_f.X'); in the DANN teacher round, 'teacher.X' and 'disc.X'."""
    parts = name.split(".")
    if parts[0] == "nets":
        return "student" if parts[1] == "adapter" else parts[1]
    return parts[0]


def record_unikd_round(nets: UniKDNets, x: torch.Tensor, teacher: TeacherOut | None,
                       rc: RoundConfig, client: int, secret: bytes | None, released: int,
                       prototypes: torch.Tensor | None = None,
                       mover: PathMover | None = None) -> Grads:
    """L DP-SGD steps on the target terms (`local_sgd`, the local SGD on the noisy gradients
    being post-processing); returns the mean noisy gradient (pseudo-gradient).

    With `rc.dp_shares` (record DP + SecAgg, `fed.record_noise=shares`) the one step is returned
    un-noised: it never leaves the node unmasked, and its noise share is added before masking.
    """
    steps = LocalSteps(rc.local_steps)
    if rc.dp_shares and (not steps.takes_noise_shares or not rc.secagg):
        raise ValueError(f"round {rc.round}: noise shares need secure aggregation and one local "
                         f"step (local_steps={rc.local_steps}, secagg={rc.secagg}); refused")
    refusal = batch_coupling(rc.hparams)  # the cloud refuses it at start; a node re-checks
    if refusal:
        raise ValueError(f"round {rc.round}: {refusal}")
    loss = TargetLoss(nets, rc.schedule, rc.hparams, prototypes)
    loss.with_w = rc.w_share is not None
    data = (x,) if teacher is None else (x, teacher.feat, teacher.logits)
    params = dict(loss.named_parameters())
    path = round_path(rc)
    w_coords: list[torch.Tensor] = []  # each step's noised w coordinate (rc.w_share)
    nets.train()

    def gradient(j: int) -> dict[str, torch.Tensor]:
        loss.sched = step_schedule(rc, path[j])  # `both` mode: each step its own values
        loss.augment = augment_generator(rc.seed, client_stream(client), rc.global_step, sub=j)
        g = _dp_step(loss, data, rc, client, secret, released, PHASE_UNIKD, j,
                     rc.w_share or 0.0)
        if BOUNDED in g:
            w_coords.append(g.pop(BOUNDED))
        return g

    if mover is not None:  # the loss module names them "nets.<name>"
        mover = mover.keyed({k: k.removeprefix("nets.") for k in params})
    with frozen_bn(nets):
        mean = local_sgd(params, steps, rc.lr, gradient, mover)
    out = _wire_groups(mean)
    if w_coords:  # the mean over the local steps, as the pseudo-gradient is
        out["target_w"] = {"w": (sum(w_coords) / len(w_coords)).to(torch.float32)}
    return out


def record_dann_round(teacher: CNN1d, disc: DomainDisc, x: torch.Tensor, rc: TeacherRoundConfig,
                      client: int, secret: bytes | None, released: int,
                      mover: PathMover | None = None) -> Grads:
    """A DP-SGD step on the DANN target half per local step (one in edge mode), each at its
    own GRL α; the mean noisy gradients for `teacher` and `disc`. `mover`: keyed
    "teacher.<name>" / "disc.<name>", the loss module's own names (None: plain SGD)."""
    loss = DannTargetLoss(teacher, disc, rc.alpha, rc.terms)
    params, path = dict(loss.named_parameters()), round_path(rc)
    teacher.train()
    disc.train()

    def gradient(j: int) -> dict[str, torch.Tensor]:
        loss.alpha = step_alpha(rc, path[j])
        return _dp_step(loss, (x,), rc, client, secret, released, PHASE_TEACHER, j)

    with frozen_bn(teacher):
        g = local_sgd(params, LocalSteps(rc.local_steps), rc.lr or 0.0, gradient, mover)
    out: Grads = {"teacher": {}, "disc": {}}
    for name, t in g.items():
        member, rest = name.split(".", 1)
        out[member][rest] = t
    return out
