"""The cloud's state and its half of every round (spec §9).

The cloud keeps the master student+adapter, D_f and D_d, their three Adam optimizers, the
teacher and the labelled source data. A round (server/fed/rounds.py `run_round`) is a
transaction on that state, in five steps:

1. `begin_round`: keep the weights the clients will receive (BN buffers included), then run the
   source-side terms on one source batch at those weights (the same `shared.unikd.engine` call
   as centralized); their gradient waits in .grad. A round of L > 1 steps
   (`fed.local_steps_mode: both`) runs the L source steps on a copy instead
   (server/fed/source_path.py) and leaves their mean gradient there;
2. `round_messages`: the round's messages, built once from what `begin_round` kept (weights,
   schedule, settings, the expected cross KD's source scalar) and never changed afterwards;
3. the round loop sends them and collects the replies (server/fed/transport.py);
4. it checks them: shapes, NaN, stale or duplicate replies, outliers (server/fed/aggregate.py);
5. `finish_round`: add the clients' target gradients, weighted by their sample counts, to the
   source one; compose the BN running statistics (source update first, then the clients' mean
   target update, the order of the centralized step) and step all three optimizers, by as many
   steps as the round covers (server/fed/server_step.py). With too few valid replies,
   `abort_round` instead: nothing moves, BN statistics included.

Which steps of the run's clock a round covers is `plan` (shared/clock/local_steps.py).

With `distill.ema_decay` > 0 the cloud also keeps an EMA of the student (shared/unikd/ema.py,
the centralized trainer's own), updated by every applied round. Training rounds send the live
weights; evaluation and the final student use the EMA (`reported_nets`).

Target data never reaches this module: it sees gradients, BN statistics and scalar metrics.

The cloud computes on the run's device (`device`, shared/unikd/compute.py): its nets, their
optimizers, the EMA and the teacher live there; the source windows stay on the CPU (each batch
moves in the engine's terms), replies arrive and are checked on the CPU and their means move to
the device when applied (`finish_round`), and what goes out is copied to the CPU (`to_record`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from server.fed.aggregate import ClientUpdate, add_grads, compose_bn, weighted_mean
from server.fed.dp.w_coordinate import private_w_scale
from server.fed.dp.federation import DpPlan
from server.fed.secagg import masking_clip
from server.fed.server_step import adam_preconditioner, apply_server_step
from server.fed.source_path import add_cross_grads, run_source_path
from shared.errors import UnikdError
from shared.protocol import wire
from shared.config import RunConfig
from shared.data.adatime import Domain
from shared.data.loaders import Normalizer
from shared.data.scenario import load_split, resolve_spec
from shared.data.datasets import DatasetSpec, parse_scenario
from shared.unikd.engine import (KDHparams, StepSchedule, TeacherOut, UniKDNets, cross_kd_source_grad,
                           make_optimizers, source_terms, target_passes, teacher_outputs,
                           zero_all)
from shared.privacy.clipping import w_from_coordinate
from shared.unikd.compute import resolve_device, to_device
from shared.unikd.ema import StudentEMA, reported_nets, student_ema
from shared.unikd.losses import class_prototypes
from shared.protocol.checkpoints import teacher_members, teacher_to_arrays
from shared.protocol.records import (RoundConfig, SimSetup, bn_buffers, group_named_params,
                                     param_name, spec_to_record, student_state, to_record)
from shared.clock.local_steps import LocalStep, LocalSteps, PathMover, RoundPlan, local_path
from shared.clock.schedules import ScheduleClock
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


def private_w_mean(updates: list[ClientUpdate], scale: float) -> float:
    """The clients' mean w from the w coordinate (wire.TARGET_W) of what the cloud applies under
    DP or secure aggregation: the coordinate is s * w, s = `scale` (shared/privacy/clipping.py),
    aggregated as the gradients are (record DP: weighted by the released counts; client-level
    DP and secure aggregation: one uniform mean), so the product rule's two halves of the
    expected cross KD keep one weighting. Noise can push it outside [0, 1]: clamped there."""
    if not updates:
        return 0.0
    return w_from_coordinate(float(weighted_mean(updates, wire.TARGET_W)["w"].double().sum()),
                             scale)


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


def round_plan(cfg: RunConfig, clock: Clock) -> RoundPlan:
    """The steps each round of this run covers (fed.local_steps_mode, fed.local_steps,
    fed.rounds)."""
    f = cfg.fed
    return RoundPlan.of(f.local_steps_mode, f.local_steps, clock.total, f.rounds)


@dataclass(frozen=True)
class CloudRound:
    """A round the cloud has begun: what its clients receive and what its source step left.

    Built once by `Cloud.begin_round`; the round's messages are made from it and nothing in it
    changes until `Cloud.finish_round` or `Cloud.abort_round` closes it.
    """

    number: int
    weights: dict[str, ArrayRecord]  # student (BN buffers included), D_f, D_d as sent
    bn_before: dict[str, torch.Tensor]  # the student's BN buffers before the source step
    source: dict[str, torch.Tensor]  # the source terms; their gradient waits in .grad
    config: RoundConfig  # what every node is told this round (without the teacher count)
    # L > 1 steps under the expected cross KD: the mean of d(β_j KD_s,j) (source_path.py)
    cross_grads: dict[str, torch.Tensor] | None = None
    # fed.local_path=preconditioned, L > 1: the preconditioner and source control the nodes get
    path: dict[str, ArrayRecord] = field(default_factory=dict)

    @property
    def cross_kd(self) -> bool:
        """The expected cross KD runs: the source terms carry this round's T^2 mean source KL,
        whose second backward pass waits for the clients' mean w (`finish_round`)."""
        return "cross_kd" in self.source


@dataclass
class Cloud:
    cfg: RunConfig
    source: SourceData
    teacher: nn.Module | None
    teacher_hash: str
    clock: Clock
    dp: DpPlan | None = None  # the DP settings every train message carries (None: DP off)
    device: torch.device = field(init=False)  # where the cloud computes (the config's `device`)
    nets: UniKDNets = field(init=False)
    opts: dict = field(init=False)
    t_src: TeacherOut = field(init=False)
    ema: StudentEMA | None = field(init=False)  # the reported student's EMA (None: off)
    current: CloudRound | None = field(init=False, default=None)  # the round begun, if any
    plan: RoundPlan = field(init=False)  # the steps of the clock each round covers
    # fed.local_path=preconditioned: the last applied round's clients' mean target
    # pseudo-gradient by parameter name, the cloud's stand-in for the target half on its path
    target_control: dict[str, torch.Tensor] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        d = self.cfg.distill
        self.device = resolve_device(self.cfg.device)
        seed_init(self.cfg.seed)  # same construction as the centralized trainer (on the CPU)
        self.nets = UniKDNets.for_spec(self.source.spec).to(self.device)
        if self.teacher is not None:  # trained here, loaded or resumed: computes where we do
            self.teacher.to(self.device)
        self.opts = make_optimizers(self.nets.group_params(), d.lr, d.weight_decay,
                                    (d.beta1, d.beta2))
        self.ema = student_ema(self.nets, d.ema_decay)
        self.t_src = teacher_outputs(self.teacher, self.source.train.x)
        self.prototypes = None
        if self.cfg.fed.teacher_placement == "cloud" and self.cfg.fed.cloud_hint == "prototypes":
            self.prototypes = class_prototypes(self.t_src.feat, self.source.train.y,
                                               self.source.spec.classes)
        self.nets.train()
        self.plan = round_plan(self.cfg, self.clock)

    @property
    def hp(self) -> KDHparams:
        """The run's KD settings: the cloud's source terms and every round's config use them."""
        return KDHparams.from_config(self.cfg.distill)

    def schedule(self, epoch: int, step: int) -> StepSchedule:
        """β and the GRL α of a step, from the clock and the config's schedule switches."""
        return StepSchedule.at(self.cfg.distill, epoch, step, self.clock.steps_per_epoch)

    @property
    def schedule_clock(self) -> ScheduleClock:
        """The clock and schedule switches a `both`-mode round carries to the nodes."""
        d = self.cfg.distill
        return ScheduleClock(self.clock.steps_per_epoch, d.epochs, d.beta_natural_log,
                             d.grl_ramp)

    def round_path(self, rnd: int) -> list[LocalStep]:
        """Round `rnd`'s steps on the cloud's side: one source step (edge mode), or the
        round's L steps of the clock (both mode), as the nodes read them (target_side.py)."""
        first = self.plan.first_step(rnd)
        if not self.plan.both:
            return local_path(LocalSteps(1), first, *self.clock.at(first), None)
        return local_path(self.plan.local_steps(rnd), first, *self.clock.at(first),
                          self.schedule_clock)

    def round_config(self, rnd: int) -> RoundConfig:
        """Round `rnd`'s schedule and settings, before the privacy plan adds its own."""
        first = self.plan.first_step(rnd)
        epoch, step = self.clock.at(first)
        sched = self.schedule(epoch, step)
        d, f = self.cfg.distill, self.cfg.fed
        return RoundConfig(
            round=rnd, epoch=epoch, step=step, global_step=first, schedule=sched,
            hparams=self.hp, lr=d.lr, local_steps=self.plan.local_steps(rnd).count,
            seed=self.cfg.seed, batch_size=d.batch_for(self.source.spec), bn_policy=f.bn_policy,
            teacher_hash=self.teacher_hash if f.teacher_placement != "cloud" else "",
            dataset=self.source.spec.name,
            clock=self.schedule_clock if self.plan.both else None)

    def node_config(self, rnd: int, dp: DpPlan | None = None,
                    source_kd: float | None = None) -> RoundConfig:
        """The round config with the settings the nodes must apply: DP (`dp`), secure
        aggregation, and under the expected cross KD this round's source scalar."""
        rc = self.round_config(rnd)
        if dp is not None:
            rc.dp_mode, rc.dp_clip, rc.dp_noise = dp.mode, dp.clip, dp.noise_multiplier
            rc.dp_count_std = dp.count_std
            rc.dp_clip_scope = self.cfg.fed.dp_clip_scope
        if source_kd is not None:
            rc.source_kd = source_kd
        f = self.cfg.fed
        if f.secure_aggregation:  # clip bound: the DP clip under central DP, else its own
            rc.secagg, rc.secagg_bits = True, f.secagg_bits
            rc.secagg_clip = masking_clip(f)
            rc.dp_shares = rc.dp_mode == "record" and f.record_noise == "shares"
        if self.w_scale is not None:  # the mean w inside the private update (wire.TARGET_W)
            rc.w_share = f.w_share
        return rc

    @property
    def w_scale(self) -> float | None:
        """The scale s of the w coordinate (`private_w_mean`) where the expected cross KD runs
        under DP or secure aggregation; None where the cloud reads the metric w_mean."""
        return private_w_scale(self.cfg)

    def reported_nets(self) -> UniKDNets:
        """The nets the run evaluates and delivers: the EMA student and adapter when
        `distill.ema_decay` > 0, else the live nets. Read it; training steps `self.nets`."""
        return reported_nets(self.nets, self.ema)

    def weight_records(self, nets: UniKDNets | None = None) -> dict[str, ArrayRecord]:
        """The weights of `nets` (default: the live ones) as records: copies, so later updates
        do not leak in."""
        nets = self.nets if nets is None else nets
        return {wire.STUDENT: to_record(student_state(nets)),
                wire.D_F: to_record(nets.d_f.state_dict()),
                wire.D_D: to_record(nets.d_d.state_dict())}

    def down_content(self, rc: RoundConfig, weights: dict[str, ArrayRecord],
                     with_teacher: bool) -> RecordDict:
        """One payload: `weights`, `rc` and what a node needs to use them (and, with
        `with_teacher`, the teacher snapshot, where the teacher goes to the edges)."""
        teacher = (with_teacher and bool(self.teacher_hash)
                   and self.cfg.fed.teacher_placement != "cloud")
        if teacher:
            rc = dataclasses.replace(rc, teacher_members=len(teacher_members(self.teacher)))
        content = RecordDict({
            **weights,
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

    @property
    def piggybacks_evaluation(self) -> bool:
        """Whether a training round can carry the evaluation of the weights it sends
        (`fed.evaluation: piggyback`): not under secure aggregation, whose replies carry
        masked sums. With the student's EMA on, the round also carries the EMA's weights
        (wire.EVAL_STUDENT), which the nodes score instead of the training weights."""
        f = self.cfg.fed
        return f.evaluation == "piggyback" and not f.secure_aggregation

    def eval_content(self, rnd: int) -> RecordDict:
        """Federated evaluation's payload: the reported weights (the EMA's, when on), no teacher,
        no DP settings."""
        return self.down_content(self.node_config(rnd), self.weight_records(self.reported_nets()),
                                 with_teacher=False)

    def begin_round(self, rnd: int, evaluate: bool = False) -> CloudRound:
        """Open round `rnd`: keep the weights (BN buffers included) the clients receive, then run
        the source step at them. Its forward pass moves the BN buffers (train mode); the
        messages carry them as they were before, as the centralized step sees them.
        `evaluate`: the nodes also score those weights (`fed.evaluation: piggyback`)."""
        if self.current is not None:
            raise UnikdError(f"round {rnd} begun while round {self.current.number} is open")
        weights = self.weight_records()
        bn_before = {k: v.clone() for k, v in bn_buffers(self.nets.student).items()}
        path, cross, records = self.round_path(rnd), None, {}
        if len(path) == 1:
            src = self.source_step(rnd)
        else:  # L > 1 steps (both mode): on a copy; the master weights stay as sent
            zero_all(self.opts)
            mover = self.path_mover()
            walked = run_source_path(self.nets, path, self.cfg.distill.lr, self.terms_at, mover)
            src, cross = walked.terms, walked.cross_grads
            if mover is not None:  # the nodes' paths: the same preconditioner, this source half
                records = {wire.PATH_PRECOND: to_record(dict(mover.precond)),
                           wire.PATH_CONTROL: to_record(
                               {k: p.grad for k, p in self.nets.named_parameters()
                                if p.grad is not None})}
        source_kd = src["cross_kd"].item() if "cross_kd" in src else None
        rc = self.node_config(rnd, self.dp, source_kd)
        if evaluate:
            rc.evaluate = True
            if self.ema is not None:  # the reported weights are not the sent ones: send them too
                records[wire.EVAL_STUDENT] = to_record(student_state(self.reported_nets()))
        self.current = CloudRound(rnd, weights, bn_before, src, rc, cross, records)
        return self.current

    def path_mover(self) -> PathMover | None:
        """How the local paths of a round of L > 1 steps move (`fed.local_path`): for the
        cloud's, the last round's target pseudo-gradient stands in for the target half."""
        if self.cfg.fed.local_path != "preconditioned":
            return None
        return PathMover(adam_preconditioner(self.opts, dict(self.nets.named_parameters())),
                         self.target_control)

    def round_messages(self, nodes: list[int], has_teacher: set[int]) -> dict[int, RecordDict]:
        """The open round's messages: two payloads at most, nodes holding the teacher share one."""
        r = self.open_round()
        weights = {**r.weights, **r.path}
        plain = self.down_content(r.config, weights, with_teacher=False)
        with_teacher = (self.down_content(r.config, weights, with_teacher=True)
                        if any(n not in has_teacher for n in nodes) else plain)
        return {n: plain if n in has_teacher else with_teacher for n in nodes}

    def open_round(self) -> CloudRound:
        """The round begun and not yet closed."""
        if self.current is None:
            raise UnikdError("no round is open: begin_round first")
        return self.current

    def source_step(self, rnd: int) -> dict[str, torch.Tensor]:
        """Source-side terms at the current weights; leaves their gradient in .grad."""
        zero_all(self.opts)
        terms = self.terms_at(self.nets, self.round_path(rnd)[0])
        terms["loss"].backward(retain_graph="cross_kd" in terms)  # cross KD: once more later
        return terms

    def terms_at(self, nets: UniKDNets, s: LocalStep) -> dict[str, torch.Tensor]:
        """The source terms of one step of the clock at `nets`' weights: its source batch, its
        dropout draws, its schedule values (the config's, computed as the nodes do)."""
        idx = batch_plan(self.cfg.seed, SOURCE_STREAM, s.epoch, len(self.source.train),
                         self.cfg.distill.batch_for(self.source.spec))
        idx = idx[s.batch % len(idx)]
        sched = (self.schedule(*self.clock.at(s.seed_step)) if s.schedule is None
                 else StepSchedule(*s.schedule))  # both mode: the values the nodes compute
        seed_side(self.cfg.seed, SOURCE_STREAM, s.seed_step)
        return source_terms(nets, self.source.train.x[idx], self.source.train.y[idx],
                            self.t_src[idx], sched, self.hp)

    def abort_round(self) -> None:
        """Close the open round moving nothing: drop the source gradient and its BN update."""
        r = self.open_round()
        self.current = None
        zero_all(self.opts)
        with torch.no_grad():
            for name, buf in self.nets.student.named_buffers():
                buf.copy_(r.bn_before[f"student.{name}"])

    def finish_round(self, updates: list[ClientUpdate], target_w: float | None = None) -> None:
        """Close the open round: add the clients' mean target gradient to the source one,
        compose BN, step.

        With the expected cross KD, the source terms get their second backward pass here,
        scaled by `target_w`, the clients' mean w (`target_w_mean`), in the order the
        centralized step sums its gradients.
        """
        r = self.open_round()
        self.current = None
        named = group_named_params(self.nets)
        keep = self.plan.both and self.cfg.fed.local_path == "preconditioned"
        for group, key in (("student", wire.STUDENT_GRAD), ("d_f", wire.D_F_GRAD),
                           ("d_d", wire.D_D_GRAD)):
            mean = to_device(weighted_mean(updates, key), self.device) if updates else {}
            add_grads(named[group], mean)
            if keep:  # the next round's stand-in for the target half on the cloud's path
                self.target_control.update({param_name(group, k): v.clone()
                                            for k, v in mean.items()})
        if r.cross_kd and target_w is not None and r.cross_grads is not None:
            add_cross_grads(self.nets, r.cross_grads, target_w)  # L > 1 steps
        elif r.cross_kd and target_w is not None:
            cross_kd_source_grad(r.source, target_w,
                                 self.schedule(*self.clock.at(self.plan.first_step(r.number))))
        steps = r.config.local_steps if self.plan.both else 1  # steps of the clock advanced
        if updates and self.cfg.fed.bn_policy != "local":
            passes = target_passes(self.hp)  # BN updates per target step
            compose_bn(self.nets.student, r.bn_before, weighted_mean(updates, wire.STUDENT_BN),
                       prefix="student.", target_passes=passes * steps)
        apply_server_step(self.opts, steps, self.cfg.fed.server_step, self.fold_ema)

    def fold_ema(self) -> None:
        """After each step applied, as the centralized trainer does (a no-op when off)."""
        if self.ema is not None:
            self.ema.update(self.nets)
