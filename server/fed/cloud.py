"""The cloud's state and its half of every round (spec §9).

The cloud keeps the master student+adapter, D_f and D_d, their three Adam optimizers, the
teacher and the labelled source data. Each round it

1. sends the current weights and the round's schedule to every client;
2. runs the source-side terms on one source batch (same `shared.unikd.engine` call as centralized);
3. adds the clients' target gradients, weighted by their sample counts, to its own;
4. composes the BN running statistics (source update first, then the clients' mean target
   update, the order of the centralized step) and steps all three optimizers.

Target data never reaches this module: it sees gradients, BN statistics and scalar metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from flwr.app import RecordDict
from torch import nn

from server.fed.aggregate import ClientUpdate, add_grads, compose_bn, weighted_mean
from server.fed.secagg import masking_clip
from shared.protocol import wire
from shared.config import RunConfig
from shared.data.adatime import Domain
from shared.data.loaders import Normalizer
from shared.data.scenario import load_split, resolve_spec
from shared.data.datasets import DatasetSpec, parse_scenario
from shared.unikd.engine import (KDHparams, StepSchedule, TeacherOut, UniKDNets, cross_kd_source_grad,
                           make_optimizers, source_terms, step_all, teacher_outputs, zero_all)
from shared.unikd.losses import class_prototypes
from shared.protocol.checkpoints import teacher_members, teacher_to_arrays
from shared.protocol.records import (RoundConfig, SimSetup, bn_buffers, group_named_params,
                                     spec_to_record, student_state, to_record)
from shared.clock.seeding import SOURCE_STREAM, seed_init, seed_side
from shared.clock.steps import batch_plan

log = logging.getLogger(__name__)


@dataclass
class SourceData:
    spec: DatasetSpec
    source: str
    target: str  # an id only: the cloud holds no target windows
    train: Domain
    test: Domain
    normalizer: Normalizer


def load_source(cfg: RunConfig) -> SourceData:
    spec = resolve_spec(cfg.data)
    src, trg = parse_scenario(cfg.data.scenario)
    train = load_split(cfg.data, spec, "train", src)
    test = load_split(cfg.data, spec, "test", src)
    norm = Normalizer.fit(train.x) if cfg.data.normalize else Normalizer.identity(spec.channels)
    train.x, test.x = norm(train.x), norm(test.x)
    return SourceData(spec, src, trg, train, test, norm)


def target_w_mean(updates: list[ClientUpdate]) -> float:
    """The clients' mean confusion weight, each weighted by its share n_i/N of the windows.

    n/N is exactly 1.0 for one client, so a 1-client federation reproduces the centralized
    value to the bit.
    """
    total = sum(u.num_examples for u in updates)
    return sum((u.num_examples / total) * float(u.metrics["w_mean"]) for u in updates)


def sim_setup(cfg: RunConfig, source: SourceData) -> SimSetup:
    """Where simulated nodes find their windows (deployed nodes use their own data)."""
    return SimSetup(data_path=cfg.data.path, synth_shift=cfg.data.synth_shift,
                    target=source.target, partition=cfg.fed.partition,
                    num_clients=cfg.fed.clients, seed=cfg.seed)


@dataclass
class Clock:
    """Global step <-> (epoch, step); the server owns it and broadcasts the values."""

    steps_per_epoch: int
    num_epochs: int

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.num_epochs

    def at(self, global_step: int) -> tuple[int, int]:
        return global_step // self.steps_per_epoch + 1, global_step % self.steps_per_epoch


@dataclass
class Cloud:
    cfg: RunConfig
    source: SourceData
    teacher: nn.Module | None
    teacher_hash: str
    nets: UniKDNets = field(init=False)
    opts: dict = field(init=False)
    t_src: TeacherOut = field(init=False)
    clock: Clock | None = None
    round: int = 0

    def __post_init__(self) -> None:
        d = self.cfg.distill
        seed_init(self.cfg.seed)  # same construction as the centralized trainer
        self.nets = UniKDNets.for_spec(self.source.spec)
        self.opts = make_optimizers(self.nets.group_params(), d.lr, d.weight_decay,
                                    (d.beta1, d.beta2))
        self.t_src = teacher_outputs(self.teacher, self.source.train.x)
        self.prototypes = None
        if self.cfg.fed.teacher_placement == "cloud" and self.cfg.fed.cloud_hint == "prototypes":
            self.prototypes = class_prototypes(self.t_src.feat, self.source.train.y,
                                               self.source.spec.classes)
        self.nets.train()

    @property
    def hp(self) -> KDHparams:
        """The run's KD settings: the cloud's source terms and every round's config use them."""
        return KDHparams.from_config(self.cfg.distill)

    def schedule(self, epoch: int, step: int) -> StepSchedule:
        """β and the GRL α of a step, from the clock and the config's schedule switches."""
        return StepSchedule.at(self.cfg.distill, epoch, step, self.clock.steps_per_epoch)

    def round_config(self, rnd: int) -> RoundConfig:
        """Round `rnd`'s schedule and settings, before the privacy plan adds its own."""
        epoch, step = self.clock.at(rnd - 1) if self.clock else (1, 0)
        sched = self.schedule(epoch, step) if self.clock else StepSchedule(0.0, 0.0)
        d, f = self.cfg.distill, self.cfg.fed
        return RoundConfig(
            round=rnd, epoch=epoch, step=step, global_step=rnd - 1, schedule=sched,
            hparams=self.hp, lr=d.lr, local_steps=f.local_steps, seed=self.cfg.seed,
            batch_size=d.batch_for(self.source.spec), bn_policy=f.bn_policy,
            teacher_hash=self.teacher_hash if f.teacher_placement != "cloud" else "",
            dataset=self.source.spec.name)

    def down_content(self, rnd: int, with_teacher: bool, privacy=None) -> RecordDict:
        """What every client receives this round (snapshots: later updates do not leak in).

        `privacy` (a PrivacyPlan or None) adds the DP settings the nodes must apply.
        """
        rc = self.round_config(rnd)
        if privacy is not None:
            rc.dp_mode, rc.dp_clip, rc.dp_noise = (privacy.mode, privacy.clip,
                                                   privacy.noise_multiplier)
            rc.dp_count_std = getattr(privacy, "count_std", 0.0)
            rc.dp_clip_scope = self.cfg.fed.dp_clip_scope
        f = self.cfg.fed
        if f.secure_aggregation:  # clip bound: the DP clip under central DP, else its own
            rc.secagg, rc.secagg_bits = True, f.secagg_bits
            rc.secagg_clip = masking_clip(f)
            rc.dp_shares = rc.dp_mode == "record" and f.record_noise == "shares"
        teacher = (with_teacher and bool(self.teacher_hash)
                   and self.cfg.fed.teacher_placement != "cloud")
        if teacher:
            rc.teacher_members = len(teacher_members(self.teacher))
        content = RecordDict({
            wire.STUDENT: to_record(student_state(self.nets)),
            wire.D_F: to_record(self.nets.d_f.state_dict()),
            wire.D_D: to_record(self.nets.d_d.state_dict()),
            wire.NORM: to_record({"mean": self.source.normalizer.mean,
                                  "std": self.source.normalizer.std}),
            wire.CONFIG: rc.to_record(),
            wire.SPEC: spec_to_record(self.source.spec),
            wire.SIM: sim_setup(self.cfg, self.source).to_record(),
        })
        if teacher:
            content[wire.TEACHER] = to_record(teacher_to_arrays(self.teacher))
        if self.prototypes is not None:
            content[wire.HINT_PROTOTYPES] = to_record({"feat": self.prototypes})
        return content

    def up_shapes(self) -> dict:
        g = group_named_params(self.nets)
        return wire.expected_up_shapes(g["student"], g["d_f"], g["d_d"],
                                       bn_buffers(self.nets.student))

    def source_step(self, rnd: int) -> dict[str, torch.Tensor]:
        """Source-side terms at the current weights; leaves their gradient in .grad."""
        epoch, step = self.clock.at(rnd - 1)
        idx = batch_plan(self.cfg.seed, SOURCE_STREAM, epoch, len(self.source.train),
                         self.cfg.distill.batch_for(self.source.spec))
        idx = idx[step % len(idx)]
        zero_all(self.opts)
        seed_side(self.cfg.seed, SOURCE_STREAM, rnd - 1)
        terms = source_terms(self.nets, self.source.train.x[idx], self.source.train.y[idx],
                             self.t_src[idx], self.schedule(epoch, step), self.hp)
        terms["loss"].backward(retain_graph="cross_kd" in terms)  # cross KD: once more later
        return terms

    def announce_source_kd(self, contents: dict, src: dict[str, torch.Tensor]) -> None:
        """Expected cross KD: tell the edges this round's T^2 mean source KL (one scalar)."""
        if "cross_kd" in src:
            value = src["cross_kd"].item()
            for content in {id(c): c for c in contents.values()}.values():
                content[wire.CONFIG]["source_kd"] = value

    def undo_source_step(self, bn_before: dict[str, torch.Tensor]) -> None:
        """A skipped round moves nothing: drop the source gradient and its BN update."""
        zero_all(self.opts)
        with torch.no_grad():
            for name, buf in self.nets.student.named_buffers():
                buf.copy_(bn_before[f"student.{name}"])

    def apply(self, updates: list[ClientUpdate], bn_before: dict[str, torch.Tensor],
              rnd: int = 0, src: dict[str, torch.Tensor] | None = None,
              target_w: float | None = None) -> None:
        """Add the clients' mean target gradient to the source one, compose BN, step.

        With the expected cross KD, `src` (this round's source terms) gets its second backward
        pass here, scaled by `target_w`, the clients' mean w (`target_w_mean`), in the order
        the centralized step sums its gradients.
        """
        named = group_named_params(self.nets)
        for group, key in (("student", wire.STUDENT_GRAD), ("d_f", wire.D_F_GRAD),
                           ("d_d", wire.D_D_GRAD)):
            add_grads(named[group], weighted_mean(updates, key) if updates else {})
        if src is not None and "cross_kd" in src and target_w is not None:
            cross_kd_source_grad(src, target_w, self.schedule(*self.clock.at(rnd - 1)))
        if updates and self.cfg.fed.bn_policy != "local":
            compose_bn(self.nets.student, bn_before, weighted_mean(updates, wire.STUDENT_BN),
                       prefix="student.",
                       target_passes=2 if self.cfg.distill.double_target_forward else 1)
        step_all(self.opts)
