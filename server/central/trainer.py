"""Centralized UNI-KD: the same shared.unikd.engine terms the federation splits, on one machine.

Each step runs the source terms, then the target terms (client 0's stream), accumulates both
gradients and steps the three optimizers together; see shared/unikd/engine.py for the update order.
With `distill.ema_decay` > 0 each step then folds the live student into its EMA
(shared/unikd/ema.py, as the cloud does after each round), and the student returned is the EMA.

The nets and the teacher compute on the run's device (`device`, shared/unikd/compute.py); the
windows stay on the CPU and each batch moves where it is used (the engine's terms).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from shared.config import RunConfig
from shared.data.scenario import ScenarioData
from shared.unikd.engine import (KDHparams, StepSchedule, TeacherOut, UniKDNets, cross_kd_source_grad,
                           expected_cross_kd, make_optimizers, scalars, source_terms, step_all,
                           target_terms, teacher_outputs, zero_all)
from shared.unikd.compute import resolve_device
from shared.unikd.ema import StudentEMA, reported_nets, student_ema
from shared.unikd.evaluation import evaluate
from shared.unikd.models import CNN1d
from shared.clock.seeding import (SOURCE_STREAM, augment_generator, client_stream, seed_init,
                                  seed_side)
from shared.clock.steps import StepInfo, run_epochs

log = logging.getLogger(__name__)


@dataclass
class StudentResult:
    student: CNN1d
    history: list[dict] = field(default_factory=list)  # one row per epoch
    train_seconds: float = 0.0
    # adapter, discriminators; with the EMA on also `live_student` and `live_adapter`, the
    # weights training ended on (`student` and `adapter` are then the EMA's)
    extras: dict[str, nn.Module] = field(default_factory=dict)


class CachedTeacher:
    """Teacher outputs per window: computed once (cache on) or on every batch (cache off)."""

    def __init__(self, teacher: nn.Module, x: torch.Tensor, cache: bool):
        self.teacher, self.x = teacher, x
        self.table = teacher_outputs(teacher, x) if cache else None

    def __call__(self, idx: torch.Tensor) -> TeacherOut:
        if self.table is not None:
            return self.table[idx]
        return teacher_outputs(self.teacher, self.x[idx])


def build_unikd(cfg: RunConfig, data: ScenarioData, teacher_features: int = 128):
    """Nets and optimizers, constructed under the init seed (the federated server does the same)
    on the CPU, so every device starts from the same weights, then moved to the run's device."""
    seed_init(cfg.seed)
    nets = UniKDNets.for_spec(data.spec, teacher_features).to(resolve_device(cfg.device))
    d = cfg.distill
    opts = make_optimizers(nets.group_params(), d.lr, d.weight_decay, (d.beta1, d.beta2))
    return nets, opts


def distill_unikd(cfg: RunConfig, data: ScenarioData, teacher: nn.Module, progress: bool = True,
                  step_hook: Callable[[int, dict, dict], None] | None = None,
                  epoch_hook: Callable[[int, nn.Module], None] | None = None,
                  probe_decays: Sequence[float] = (),
                  probe_hook: Callable[[int, dict[str, nn.Module]], None] | None = None
                  ) -> StudentResult:
    """UNI-KD on one machine. `step_hook(global_step, source scalars, target scalars)` sees
    every step; `epoch_hook(epoch, student)` every epoch's end, with the student the run
    reports (the EMA when `distill.ema_decay` > 0), where a federation evaluates.

    Benchmarks only: `probe_hook(epoch, students)` sees at every epoch's end the live student
    (`"live"`) and, for each decay d of `probe_decays`, an EMA of decay d kept beside the run
    (`f"ema{d}"`). An EMA reads the live weights and changes nothing in training, so the probe
    of decay d is exactly the student a run with `distill.ema_decay=d` reports: one training run
    measures every decay."""
    d, hp = cfg.distill, KDHparams.from_config(cfg.distill)
    start = time.perf_counter()
    teacher.to(resolve_device(cfg.device)).eval()
    t_src = CachedTeacher(teacher, data.src_train.x, d.cache_teacher)
    t_trg = CachedTeacher(teacher, data.trg_train.x, d.cache_teacher)
    nets, opts = build_unikd(cfg, data, getattr(teacher, "features_dim", 128))
    ema = student_ema(nets, d.ema_decay)  # None: off
    probes = {f"ema{p:g}": StudentEMA(nets, p) for p in probe_decays}
    nets.train()

    def step(s: StepInfo) -> dict[str, float]:
        sched = StepSchedule.at(cfg.distill, s.epoch, s.step, s.steps_per_epoch)
        zero_all(opts)
        seed_side(cfg.seed, SOURCE_STREAM, s.global_step)
        src_teacher = t_src(s.src_idx)
        src = source_terms(nets, data.src_train.x[s.src_idx], data.src_train.y[s.src_idx],
                           src_teacher, sched, hp)
        seed_side(cfg.seed, client_stream(0), s.global_step)
        expected = expected_cross_kd(hp)
        compat = (src_teacher, src) if not hp.target_kd and not expected else None
        trg = target_terms(nets, data.trg_train.x[s.trg_idx], t_trg(s.trg_idx), sched, hp,
                           compat_source=compat,
                           source_kd=src["cross_kd"].item() if expected else 0.0,
                           augment=augment_generator(cfg.seed, client_stream(0), s.global_step))
        if compat is None:  # two backward passes: exactly what the federated split sums
            src["loss"].backward(retain_graph=expected)
            trg["loss"].backward()
            if expected:  # the cloud's half of the cross KD, after the clients' gradients
                cross_kd_source_grad(src, trg["w_mean"].item(), sched)
        else:  # the reference's cross-domain KD shares the source graph
            (src["loss"] + trg["loss"]).backward()
        step_all(opts)
        if ema is not None:
            ema.update(nets)
        for probe in probes.values():
            probe.update(nets)
        src_s, trg_s = scalars(src), scalars(trg)
        if step_hook is not None:
            step_hook(s.global_step, src_s, trg_s)
        if epoch_hook is not None and s.step == s.steps_per_epoch - 1:
            epoch_hook(s.epoch, reported_nets(nets, ema).student)
        if probe_hook is not None and s.step == s.steps_per_epoch - 1:
            probe_hook(s.epoch, {"live": nets.student,
                                 **{k: e.reported(nets).student for k, e in probes.items()}})
        return {**{f"src_{k}": v for k, v in src_s.items()},
                **{f"trg_{k}": v for k, v in trg_s.items()},
                "beta": sched.beta, "alpha": sched.alpha}

    history = run_epochs(cfg.seed, len(data.src_train), len(data.trg_train), d.batch_for(data.spec),
                         d.epochs, step, f"unikd {data.name}", progress)
    nets.eval()
    final = reported_nets(nets, ema).eval()  # eval() of the EMA view: the same d_f, d_d
    live = {"live_student": nets.student, "live_adapter": nets.adapter} if ema else {}
    return StudentResult(final.student, history, time.perf_counter() - start,
                         {"adapter": final.adapter, "d_f": nets.d_f, "d_d": nets.d_d, **live})


def score_student(student: nn.Module, data: ScenarioData) -> dict[str, float]:
    """Final-epoch student on the target test split; source test for reference."""
    trg = evaluate(student, data.trg_test, data.spec.classes)
    src = evaluate(student, data.src_test, data.spec.classes)
    return {"mf1": trg["mf1"], "acc": trg["acc"], "src_mf1": src["mf1"], "src_acc": src["acc"]}
