"""Baseline students of spec §6 (and the §3.4 lower bound), on UNI-KD's student backbone.

Every method has the signature of `server.central.runner.Method`: (cfg, data, teacher, progress) ->
StudentResult. They share UNI-KD's step clock (`shared.clock.steps.iterate_steps`: same batches, same
epoch length min(#src, #trg batches)), its seeding (`seed_init` before models are built,
`seed_side` before each side's forward: source stream 0, target = client 0's stream), its
optimizer settings (cfg.distill lr / weight decay / betas / epochs / batch size, no LR schedule),
and its evaluation of the final-epoch student (`server.central.trainer.score_student`, every test sample).

Common departures from the reference code, stated once here and again where they matter:
* The teacher we are given is the project's DANN teacher (frozen, eval mode). OFF's MobileDA and
  AAD used a *source-only* teacher checkpoint; RCD used a DANN teacher, as we do.
* A frozen teacher's outputs are computed once per window (`shared.unikd.engine.teacher_outputs`, via
  `server.central.trainer.CachedTeacher`, so `distill.cache_teacher=false` runs it per batch instead)
  and looked up per batch; in eval mode both give the same numbers.
* KL is computed with log_softmax on both sides (no log(0); spec §8.13).
* Batches, shuffling and dropout masks come from our per-(seed, stream, step) generators, not
  from DataLoader's global RNG.
* Models are built on the CPU under the init seed, then moved to the run's device (`device`);
  batches move there at their point of use (`_batch`, `_on`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from server.central.trainer import CachedTeacher, StudentResult
from shared.unikd import losses
from shared.unikd.compute import module_device, on, resolve_device
from shared.config import RunConfig
from shared.data.adatime import Domain
from shared.data.scenario import ScenarioData
from shared.unikd.engine import TeacherOut, dann_source_terms, dann_target_terms
from shared.unikd.settings import DannTargetTerms
from shared.unikd.models import Adapter, CNN1d, DomainDisc, FeatureDisc, TeacherEnsemble, student_for
from shared.clock.schedules import grl_alpha, kd_beta, training_progress
from shared.clock.seeding import SOURCE_STREAM, client_stream, seed_init, seed_side
from shared.clock.steps import StepInfo, run_epochs

# Hyperparameters the reference hard-codes per method (spec §6).
MOBILEDA_T, MOBILEDA_KD_WT, MOBILEDA_CORAL_WT = 2.0, 0.7, 0.3
AAD_T, AAD_ADV_WT = 4.0, 0.1
JKU_T, JKU_CE_WT = 20.0, 0.8  # OFF JointUKD; RCD's KD-STDA uses T=2
MMD_KERNELS, MMD_MUL = 5, 2.0

Baseline = Callable[[RunConfig, ScenarioData, nn.Module, bool], StudentResult]


# ---------------------------------------------------------------- losses not in shared.unikd.losses


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Plain KL(softmax(z_T/T) || softmax(z_S/T)), batch mean, *without* the T^2 factor.

    Gradients reach both arguments; detach the teacher's logits to keep it out of the graph.
    """
    return losses.kl_per_sample(teacher_logits, student_logits, temperature).mean()


def _cov(h: torch.Tensor) -> torch.Tensor:
    hc = h - h.mean(dim=0, keepdim=True)
    return hc.T @ hc / max(h.shape[0] - 1, 1)


def _coral(h_src: torch.Tensor, h_trg: torch.Tensor) -> torch.Tensor:
    """Deep CORAL (Sun & Saenko 2016): ||Cov(h_s) - Cov(h_t)||_F^2 / (4 d^2), unbiased covariances."""
    d = h_src.shape[1]
    return ((_cov(h_src) - _cov(h_trg)) ** 2).sum() / (4 * d * d)


def _mmd(h_src: torch.Tensor, h_trg: torch.Tensor, kernels: int = MMD_KERNELS,
         mul: float = MMD_MUL) -> torch.Tensor:
    """Multi-kernel Gaussian MMD^2 (DAN-style, as in the reference's MMD_loss).

    Base bandwidth = mean pairwise squared distance over [h_s; h_t] (off-diagonal, no gradient),
    divided by mul^(kernels//2); the kernels use base * mul^i, i = 0..kernels-1. Returns
    mean(K_ss) + mean(K_tt) - mean(K_st) - mean(K_ts). Departure: the bandwidth is clamped away
    from 0, so identical points give 0 instead of the reference's 0/0 = NaN.
    """
    n = h_src.shape[0] + h_trg.shape[0]
    total = torch.cat([h_src, h_trg])
    dist = (total[None, :, :] - total[:, None, :]).pow(2).sum(2)  # [n, n] squared L2, no sqrt
    bandwidth = (dist.detach().sum() / (n * n - n)).clamp_min(1e-12) / mul ** (kernels // 2)
    k = sum(torch.exp(-dist / (bandwidth * mul**i)) for i in range(kernels))
    b = h_src.shape[0]
    return k[:b, :b].mean() + k[b:, b:].mean() - k[:b, b:].mean() - k[b:, :b].mean()


# ---------------------------------------------------------------- shared scaffolding


def _adam(params: Iterable[nn.Parameter], cfg: RunConfig,
          betas: tuple[float, float] | None = None) -> torch.optim.Adam:
    d = cfg.distill
    return torch.optim.Adam(params, lr=d.lr, weight_decay=d.weight_decay,
                            betas=betas or (d.beta1, d.beta2))


def _src_side(cfg: RunConfig, s: StepInfo) -> None:
    seed_side(cfg.seed, SOURCE_STREAM, s.global_step)


def _trg_side(cfg: RunConfig, s: StepInfo) -> None:
    seed_side(cfg.seed, client_stream(0), s.global_step)


def _train(cfg: RunConfig, data: ScenarioData, name: str, progress: bool,
           step: Callable[[StepInfo], dict[str, float]]) -> list[dict]:
    """Run `step` over UNI-KD's step clock; returns one averaged history row per epoch."""
    d = cfg.distill
    return run_epochs(cfg.seed, len(data.src_train), len(data.trg_train), d.batch_for(data.spec),
                      d.epochs, step, f"{name} {data.name}", progress)


def _student_with_target_teacher(cfg: RunConfig, data: ScenarioData, teacher: nn.Module):
    """The frozen teacher's outputs on the target windows, and a fresh seeded student + Adam,
    both on the run's device."""
    device = resolve_device(cfg.device)
    teacher.to(device).eval()
    t_trg = CachedTeacher(teacher, data.trg_train.x, cfg.distill.cache_teacher)
    seed_init(cfg.seed)
    student = student_for(data.spec).to(device)
    opt = _adam(student.parameters(), cfg)
    student.train()
    return t_trg, student, opt


def _batch(dom: Domain, idx: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows and labels of a batch, on `model`'s device."""
    device = module_device(model)
    return on(device, dom.x[idx]), on(device, dom.y[idx])


def _on(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on `model`'s device (the tensor itself on the CPU)."""
    return on(module_device(model), x)


def _done(student: CNN1d, history: list[dict], start: float,
          extras: dict[str, nn.Module] | None = None) -> StudentResult:
    for m in (extras or {}).values():
        m.eval()
    return StudentResult(student.eval(), history, time.perf_counter() - start, extras or {})


# ---------------------------------------------------------------- methods


def source_only(cfg: RunConfig, data: ScenarioData, teacher: nn.Module,
                progress: bool = True) -> StudentResult:
    """Student (src-only), spec §3.4: CE on labelled source windows only; the teacher is ignored.

    As in `Lower_Upper_bounds`, Adam uses PyTorch's default betas (0.9, 0.999), not
    cfg.distill.beta1/beta2. Departures: the epoch length is UNI-KD's min(#src, #trg batches),
    so every method sees the same source batches (the reference iterates the source loader
    alone); target windows are never read.
    """
    start = time.perf_counter()
    seed_init(cfg.seed)
    student = student_for(data.spec).to(resolve_device(cfg.device))
    opt = _adam(student.parameters(), cfg, betas=(0.9, 0.999))
    student.train()

    def step(s: StepInfo) -> dict[str, float]:
        opt.zero_grad(set_to_none=True)
        _src_side(cfg, s)
        x, y = _batch(data.src_train, s.src_idx, student)
        ce = losses.source_ce(student(x), y)
        ce.backward()
        opt.step()
        return {"loss": ce.item(), "src_ce": ce.item()}

    return _done(student, _train(cfg, data, "source-only", progress, step), start)


def kd_target(cfg: RunConfig, data: ScenarioData, teacher: nn.Module,
              progress: bool = True) -> StudentResult:
    """Hinton KD on target: CE(S(x_s), y_s) + T^2 KL_T(T(x_t) || S(x_t)), T = cfg temperature.

    Not a reference baseline: it is the plain "KD on the target domain" control, i.e. UNI-KD
    without adapter, discriminators or sample weights. The teacher's target logits are cached
    once per window. Source and target terms get separate backward passes (their sum is one
    gradient), the split the federated trainers use.
    """
    start = time.perf_counter()
    d = cfg.distill
    t_trg, student, opt = _student_with_target_teacher(cfg, data, teacher)

    def step(s: StepInfo) -> dict[str, float]:
        opt.zero_grad(set_to_none=True)
        _src_side(cfg, s)
        x, y = _batch(data.src_train, s.src_idx, student)
        ce = losses.source_ce(student(x), y)
        ce.backward()
        _trg_side(cfg, s)
        z_s = student(_on(student, data.trg_train.x[s.trg_idx]))
        kd = d.temperature**2 * _kl(t_trg(s.trg_idx).logits, z_s, d.temperature)
        kd.backward()
        opt.step()
        return {"loss": ce.item() + kd.item(), "src_ce": ce.item(), "trg_kd": kd.item()}

    return _done(student, _train(cfg, data, "kd-target", progress, step), start)


def dann_student(cfg: RunConfig, data: ScenarioData, teacher: nn.Module,
                 progress: bool = True) -> StudentResult:
    """DANN on the student (AdaTime DANN, the CoDATS/CDAN family's simplest member); no teacher.

    Loss = CE(S(x_s), y_s) + CE(D_d(GRL_a(S_fe(x_s))), 1) + CE(D_d(GRL_a(S_fe(x_t))), 0), with
    D_d = DomainDisc(32, spec.d_d_hidden), weights (1, 1) as AdaTime's HAR DANN. It reuses the
    teacher's DANN terms from shared.unikd.engine. Departures: alpha follows
    `training_progress(..., ramp=cfg.distill.grl_ramp)` (default: ramps from 0 over the run;
    `reference_compat` gives AdaTime's saturated schedule, spec §8.7); student and D_d share
    one Adam (identical to two Adams with the same settings, as Adam is per-parameter).
    """
    start = time.perf_counter()
    d = cfg.distill
    seed_init(cfg.seed)
    student = student_for(data.spec)
    disc = DomainDisc(student.features_dim, data.spec.d_d_hidden)
    device = resolve_device(cfg.device)
    student.to(device)
    disc.to(device)
    opt = _adam([*student.parameters(), *disc.parameters()], cfg)
    student.train()
    disc.train()

    def step(s: StepInfo) -> dict[str, float]:
        alpha = grl_alpha(training_progress(s.step, s.epoch, s.steps_per_epoch, d.epochs,
                                            d.grl_ramp))
        opt.zero_grad(set_to_none=True)
        _src_side(cfg, s)
        x, y = _batch(data.src_train, s.src_idx, student)
        src = dann_source_terms(student, disc, x, y, alpha, 1.0, 1.0)
        src["loss"].backward()
        _trg_side(cfg, s)
        trg = dann_target_terms(student, disc, data.trg_train.x[s.trg_idx], alpha,
                                DannTargetTerms())
        trg["loss"].backward()
        opt.step()
        return {"loss": src["loss"].item() + trg["loss"].item(), "src_ce": src["ce"].item(),
                "src_dom": src["dom"].item(), "trg_dom": trg["dom"].item(), "alpha": alpha}

    return _done(student, _train(cfg, data, "dann-student", progress, step), start,
                 {"d_d": disc})


def mobileda(cfg: RunConfig, data: ScenarioData, teacher: nn.Module,
             progress: bool = True) -> StudentResult:
    """MobileDA (spec §6): frozen teacher;
    CE(S(x_s), y_s) + 0.7 KL_{T=2}(T(x_t) || S(x_t)) (no T^2) + 0.3 CORAL(S_fe(x_s), S_fe(x_t)).

    Departures: the teacher is our DANN teacher with cached target logits (OFF used a
    source-only checkpoint, RCD a DANN teacher); KL uses log_softmax. CORAL couples the two
    domains, so one backward pass over the summed loss.
    """
    start = time.perf_counter()
    t_trg, student, opt = _student_with_target_teacher(cfg, data, teacher)

    def step(s: StepInfo) -> dict[str, float]:
        opt.zero_grad(set_to_none=True)
        _src_side(cfg, s)
        x, y = _batch(data.src_train, s.src_idx, student)
        h_s = student.forward_features(x)
        ce = losses.source_ce(student.forward_head(h_s), y)
        _trg_side(cfg, s)
        h_t = student.forward_features(_on(student, data.trg_train.x[s.trg_idx]))
        kd = _kl(t_trg(s.trg_idx).logits, student.forward_head(h_t), MOBILEDA_T)
        coral = _coral(h_s, h_t)
        loss = ce + MOBILEDA_KD_WT * kd + MOBILEDA_CORAL_WT * coral
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "src_ce": ce.item(), "trg_kd": kd.item(),
                "coral": coral.item()}

    return _done(student, _train(cfg, data, "mobileda", progress, step), start)


def aad(cfg: RunConfig, data: ScenarioData, teacher: nn.Module,
        progress: bool = True) -> StudentResult:
    """AAD (spec §6), per step:
    (i) D_f step: BCE(D_f(T_fe(x_s)), 1) + BCE(D_f(A(S_fe(x_s)).detach()), 0);
    (ii) student + adapter step, against the just-updated D_f:
         CE(S(x_s), y_s) + T^2 KL_{T=4}(T(x_s) || S(x_s)) + 0.1 BCE(D_f(A(S_fe(x_s))), 1),
         with the adversarial gradient flowing into S_fe and A (not detached, unlike UNI-KD §8.2).

    Faithful to the reference, AAD uses NO target data: target windows are never read (the
    epoch length is still min(#src, #trg batches), as the reference zips both loaders).
    D_f = FeatureDisc(teacher features, spec.d_d_hidden) as OFF; A = Adapter(32 -> 128).
    Departures: our DANN teacher with cached source outputs (OFF used a source-only teacher);
    D_f outputs logits and BCE applies the sigmoid (numerically safer, same loss). The
    generator term's gradient also lands in D_f.grad; it is cleared before D_f's next step.
    """
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    teacher.to(device).eval()
    t_src = CachedTeacher(teacher, data.src_train.x, cfg.distill.cache_teacher)
    t_features = getattr(teacher, "features_dim", 128)
    seed_init(cfg.seed)
    student = student_for(data.spec)
    adapter = Adapter(student.features_dim, t_features)
    d_f = FeatureDisc(t_features, data.spec.d_d_hidden)
    for m in (student, adapter, d_f):
        m.to(device)
    opt_s = _adam([*student.parameters(), *adapter.parameters()], cfg)
    opt_f = _adam(d_f.parameters(), cfg)
    for m in (student, adapter, d_f):
        m.train()

    def step(s: StepInfo) -> dict[str, float]:
        opt_s.zero_grad(set_to_none=True)
        opt_f.zero_grad(set_to_none=True)
        _src_side(cfg, s)
        x, y = _batch(data.src_train, s.src_idx, student)
        t: TeacherOut = t_src(s.src_idx)
        h = student.forward_features(x)
        a = adapter(h)
        d_loss = losses.feature_disc_loss(d_f(t.feat), d_f(a.detach()))
        d_loss.backward()
        opt_f.step()
        z = student.forward_head(h)
        ce = losses.source_ce(z, y)
        kd = AAD_T**2 * _kl(t.logits, z, AAD_T)
        adv = losses.generator_loss(d_f(a))
        loss = ce + kd + AAD_ADV_WT * adv
        loss.backward()
        opt_s.step()
        return {"loss": loss.item(), "src_ce": ce.item(), "src_kd": kd.item(),
                "src_adv": adv.item(), "d_f": d_loss.item()}

    return _done(student, _train(cfg, data, "aad", progress, step), start,
                 {"adapter": adapter, "d_f": d_f})


def jku(cfg: RunConfig, data: ScenarioData, teacher: nn.Module,
        progress: bool = True) -> StudentResult:
    """JKU = OFF `JointUKD` (= RCD `KDSTDA`, "KD-STDA"), spec §6: teacher and student trained
    jointly in ONE Adam, the teacher in train mode (dropout on, BN statistics updating):

        (1-b) [MMD(T_fe(x_s), T_fe(x_t)) + 0.8 CE(T(x_s), y_s)]
      +   b   [KL_T(T(x_s) || S(x_s)) + 0.8 CE(S(x_s), y_s) + KL_T(T(x_t) || S(x_t))]

    T = 20 (OFF JKU), KL without T^2 and not detached (KD also updates the teacher), multi-kernel
    Gaussian MMD, b = kd_beta(epoch, epochs, natural_log=cfg.distill.beta_natural_log): the
    default natural log is KD-STDA's intended 0.1 -> 0.9; `reference_compat` gives the
    reference's log10 0.1 -> 0.26 (spec §8.3).

    The teacher is a deep copy of the one given (OFF initialises JKU from the DANN teacher; RCD
    trains it from scratch); the caller's teacher is left untouched. A TeacherEnsemble is not a
    single network that can be trained jointly, so its first member is used.
    """
    start = time.perf_counter()
    d = cfg.distill
    base = teacher.members[0] if isinstance(teacher, TeacherEnsemble) else teacher
    device = resolve_device(cfg.device)
    joint_teacher = copy.deepcopy(base).to(device)
    for p in joint_teacher.parameters():
        p.requires_grad_(True)
    seed_init(cfg.seed)
    student = student_for(data.spec).to(device)
    opt = _adam([*joint_teacher.parameters(), *student.parameters()], cfg)
    joint_teacher.train()
    student.train()

    def step(s: StepInfo) -> dict[str, float]:
        beta = kd_beta(s.epoch, d.epochs, d.beta_natural_log)
        opt.zero_grad(set_to_none=True)
        _src_side(cfg, s)
        x, y = _batch(data.src_train, s.src_idx, student)
        ht_s, zt_s = joint_teacher.features_and_logits(x)
        zs_s = student(x)
        _trg_side(cfg, s)
        x_t = _on(student, data.trg_train.x[s.trg_idx])
        ht_t, zt_t = joint_teacher.features_and_logits(x_t)
        zs_t = student(x_t)
        mmd = _mmd(ht_s, ht_t)
        t_ce = losses.source_ce(zt_s, y)
        s_ce = losses.source_ce(zs_s, y)
        kd_s, kd_t = _kl(zt_s, zs_s, JKU_T), _kl(zt_t, zs_t, JKU_T)
        loss = ((1 - beta) * (mmd + JKU_CE_WT * t_ce)
                + beta * (kd_s + JKU_CE_WT * s_ce + kd_t))
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "teacher_mmd": mmd.item(), "teacher_ce": t_ce.item(),
                "src_ce": s_ce.item(), "src_kd": kd_s.item(), "trg_kd": kd_t.item(),
                "beta": beta}

    return _done(student, _train(cfg, data, "jku", progress, step), start,
                 {"teacher": joint_teacher})


BASELINES: dict[str, Baseline] = {
    "source-only": source_only,
    "kd-target": kd_target,
    "dann-student": dann_student,
    "mobileda": mobileda,
    "aad": aad,
    "jku": jku,
}
