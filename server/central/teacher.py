"""DANN teacher pre-training (spec §3.2) and teacher checkpoints.

A teacher is never chosen by a target-test score: it is the final-epoch model, or the mean of
several seeds (`teacher.ensemble`), both label-free choices. It trains on the run's device
(`device`), built on the CPU first so every device starts from the same weights.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from shared.config import RunConfig, TeacherConfig
from shared.data.scenario import ScenarioData
from shared.data.datasets import DatasetSpec
from shared.unikd.compute import CPU, on, resolve_device
from shared.unikd.engine import dann_source_terms, dann_target_terms
from shared.unikd.settings import DannTargetTerms
from shared.errors import UnikdError
from shared.unikd.models import CNN1d, DomainDisc, TeacherEnsemble, teacher_for
from shared.protocol import checkpoints
from shared.protocol.checkpoints import teacher_state
from shared.clock.schedules import grl_alpha, training_progress
from shared.clock.seeding import (INIT_DANN_TEACHER, INIT_SOURCE_TEACHER, SOURCE_STREAM,
                                  client_stream, member_seed, seed_init, seed_side)
from shared.clock.steps import StepInfo, run_epochs

log = logging.getLogger(__name__)
TEACHER_BETAS = (0.5, 0.99)


def new_dann_member(spec: DatasetSpec, tcfg: TeacherConfig, seed: int, device: torch.device
                    ) -> tuple[CNN1d, DomainDisc, dict[str, torch.optim.Optimizer]]:
    """A DANN member's teacher, domain discriminator and their Adams ("teacher", "disc"), in
    train mode on `device`: the one construction (same seed, same order) that the centralized
    and both federated trainers share, so a 1-client federation starts from the same weights."""
    seed_init(seed, what=INIT_DANN_TEACHER)
    teacher = teacher_for(spec)
    disc = DomainDisc(teacher.features_dim, spec.d_d_hidden)
    teacher.to(device)
    disc.to(device)
    opts = {name: torch.optim.Adam(m.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                   betas=TEACHER_BETAS)
            for name, m in (("teacher", teacher), ("disc", disc))}
    teacher.train()
    disc.train()
    return teacher, disc, opts


def train_dann_teacher(spec: DatasetSpec, data: ScenarioData, tcfg: TeacherConfig, seed: int,
                       progress: bool = True, history: list | None = None,
                       grl_ramp: bool = True, device: torch.device = CPU) -> CNN1d:
    """One DANN teacher: source CE + domain loss through the GRL on both domains, on `device`.

    grl_ramp=False reproduces AdaTime's unnormalised progress (alpha ~ 1 at once, spec §8.7).
    """
    teacher, disc, opts = new_dann_member(spec, tcfg, seed, device)
    terms = DannTargetTerms.from_config(tcfg)

    def step(s: StepInfo) -> dict[str, float]:
        alpha = grl_alpha(training_progress(s.step, s.epoch, s.steps_per_epoch, s.num_epochs,
                                            grl_ramp))
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        seed_side(seed, SOURCE_STREAM, s.global_step)
        src = dann_source_terms(teacher, disc, data.src_train.x[s.src_idx],
                                data.src_train.y[s.src_idx], alpha, tcfg.w_cls, tcfg.w_dom)
        src["loss"].backward()
        seed_side(seed, client_stream(0), s.global_step)
        trg = dann_target_terms(teacher, disc, data.trg_train.x[s.trg_idx], alpha, terms)
        trg["loss"].backward()
        for o in opts.values():
            o.step()
        return {"teacher_ce": src["ce"].item(),
                "teacher_dom": src["dom"].item() + trg["dom"].item()}

    rows = run_epochs(seed, len(data.src_train), len(data.trg_train), tcfg.batch_for(data.spec),
                      tcfg.epochs, step, f"teacher {data.name} seed {seed}", progress)
    if history is not None:
        history.extend(rows)
    teacher.eval()
    return teacher


def train_teacher(cfg: RunConfig, data: ScenarioData, progress: bool = True,
                  history: list | None = None) -> nn.Module:
    """The configured teacher: one DANN model, or a mean over `teacher.ensemble` seeds."""
    device = resolve_device(cfg.device)
    members = [train_dann_teacher(data.spec, data, cfg.teacher, member_seed(cfg.seed, k),
                                  progress, history, cfg.distill.grl_ramp, device)
               for k in range(cfg.teacher.ensemble)]
    return members[0] if len(members) == 1 else TeacherEnsemble(members)


def content_hash(teacher: nn.Module) -> str:
    """sha256 over the members' tensors in key order: names a frozen snapshot everywhere."""
    h = hashlib.sha256()
    for sd in teacher_state(teacher):
        for k in sorted(sd):
            h.update(k.encode())
            h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_teacher(path: str | Path, teacher: nn.Module, cfg: RunConfig, data: ScenarioData,
                 metrics: dict | None = None) -> None:
    checkpoints.save(path, checkpoints.TEACHER, {
        "members": teacher_state(teacher),
        "meta": {"dataset": data.spec.name, "scenario": data.name, "seed": cfg.seed,
                 "config_hash": cfg.hash(), "ensemble": cfg.teacher.ensemble,
                 "epochs": cfg.teacher.epochs, "content_hash": content_hash(teacher),
                 "metrics": metrics or {}},
    })


def load_teacher(path: str | Path, spec: DatasetSpec) -> tuple[nn.Module, dict]:
    ckpt = checkpoints.load(path, checkpoints.TEACHER)
    try:
        teacher = checkpoints.teacher_from_state(ckpt["members"], spec)
    except Exception as exc:
        raise UnikdError(f"{path}: not a teacher for {spec.name} ({exc})") from None
    return teacher, ckpt.get("meta", {})


def train_source_teacher(spec: DatasetSpec, train, tcfg: TeacherConfig, seed: int,
                         progress: bool = False, device: torch.device = CPU) -> CNN1d:
    """A teacher that never saw target windows: source CE only (the `source-only` placement),
    trained on `device`."""
    from shared.data.loaders import epoch_batches
    from shared.unikd.engine import losses
    from shared.clock.seeding import BATCHES, generator_for

    seed_init(seed, what=INIT_SOURCE_TEACHER)
    teacher = teacher_for(spec).to(device)
    opt = torch.optim.Adam(teacher.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                           betas=TEACHER_BETAS)
    teacher.train()
    for epoch in range(1, tcfg.epochs + 1):
        for i, idx in enumerate(epoch_batches(len(train), tcfg.batch_for(spec),
                                              generator_for(seed, SOURCE_STREAM, epoch,
                                                            BATCHES.number()))):
            opt.zero_grad(set_to_none=True)
            seed_side(seed, SOURCE_STREAM, epoch * 100_000 + i)
            losses.source_ce(teacher(on(device, train.x[idx])), on(device, train.y[idx])).backward()
            opt.step()
    return teacher.eval()
