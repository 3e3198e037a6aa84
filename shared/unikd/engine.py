"""One UNI-KD step, split by the data each part needs (spec §3.3, §9).

`source_terms` needs the labelled source batch and the teacher's outputs on it: the cloud runs it.
`target_terms` needs the unlabelled target batch and (for most terms) the teacher's outputs on it:
the edge runs it. The UNI-KD objective is the sum of the two, so a step is

    grads = d(source_terms)/dθ + Σ_k n_k/N · d(target_terms_k)/dθ,   then all three optimizers step.

Update order. All three parameter groups (student+adapter, D_f, D_d) take their gradients at the
same point θ_t and step together ("simultaneous" adversarial updates). The reference steps D_f
first and then computes the generator loss on the updated D_f; with its detach bug (spec §8.2)
that order has no effect on the student, and keeping one gradient point lets one federated round
equal one centralized step with a single message exchange instead of two.

D_f's loss only reaches D_f, and the generator loss only reaches the student and adapter: the
generator term evaluates D_f through detached parameters, so one backward pass over
`terms["loss"]` yields every group's gradient.

Devices: every term computes where the nets are (shared/unikd/compute.py); batches and teacher
outputs may arrive on the CPU and are moved here, at their point of use (on the CPU: no copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from shared.unikd import losses
from shared.unikd.augment import strong_view
from shared.unikd.compute import module_device, on
from shared.unikd.models import Adapter, CNN1d, DomainDisc, FeatureDisc, grad_reverse, student_for
from shared.data.datasets import DatasetSpec
from shared.unikd.settings import DannTargetTerms, KDHparams, StepSchedule

SOURCE_DOMAIN, TARGET_DOMAIN = 1, 0  # D_d class labels, as in the reference


@dataclass
class TeacherOut:
    """The frozen teacher's outputs on a batch: features [B, 128] and logits [B, C]."""

    feat: torch.Tensor
    logits: torch.Tensor

    def __getitem__(self, idx: torch.Tensor) -> TeacherOut:
        return TeacherOut(self.feat[idx], self.logits[idx])

    def to(self, device: torch.device) -> TeacherOut:
        """The same outputs on `device` (itself where they are there already)."""
        if self.feat.device == device and self.logits.device == device:
            return self
        return TeacherOut(on(device, self.feat), on(device, self.logits))


class UniKDNets(nn.Module):
    """Everything UNI-KD trains: the student, its adapter and the two discriminators."""

    GROUPS = ("student", "d_f", "d_d")

    def __init__(self, student: CNN1d, adapter: Adapter, d_f: FeatureDisc, d_d: DomainDisc):
        super().__init__()
        self.student, self.adapter, self.d_f, self.d_d = student, adapter, d_f, d_d

    @classmethod
    def for_spec(cls, spec: DatasetSpec, teacher_features: int = 128) -> UniKDNets:
        student = student_for(spec)
        return cls(
            student,
            Adapter(student.features_dim, teacher_features),
            FeatureDisc(teacher_features, spec.d_d_hidden),
            DomainDisc(student.features_dim, spec.d_d_hidden),
        )

    def group_params(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups, one optimizer each: opt_S (student + adapter), opt_Df, opt_Dd."""
        return {
            "student": [*self.student.parameters(), *self.adapter.parameters()],
            "d_f": list(self.d_f.parameters()),
            "d_d": list(self.d_d.parameters()),
        }


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, x: torch.Tensor, chunk: int = 512) -> TeacherOut:
    """Run the frozen teacher once over all windows (eval mode: deterministic, cacheable). The
    outputs stay on the teacher's device; `x` may be on the CPU (moved chunk by chunk)."""
    was_training = teacher.training
    teacher.eval()
    device = module_device(teacher)
    feats, logits = [], []
    for i in range(0, len(x), chunk):
        h, z = teacher.features_and_logits(on(device, x[i:i + chunk]))
        feats.append(h)
        logits.append(z)
    teacher.train(was_training)
    return TeacherOut(torch.cat(feats), torch.cat(logits))


def _d_f_frozen(nets: UniKDNets, a: torch.Tensor) -> torch.Tensor:
    """D_f evaluated with detached parameters: gradients flow to the input only."""
    params = {n: p.detach() for n, p in nets.d_f.named_parameters()}
    return functional_call(nets.d_f, params, (a,))


def _domain_side(nets: UniKDNets, h_student: torch.Tensor, teacher: TeacherOut | None,
                 sched: StepSchedule, hp: KDHparams,
                 hint_targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Terms every domain contributes: feature hint, D_f and generator halves.

    `hint_targets` stand in for the teacher's features where the teacher is absent (cloud
    placement with prototypes): they feed the hint only, never D_f's "real" half."""
    a = nets.adapter(h_student)  # [B, 128]
    t: dict[str, torch.Tensor] = {}
    if teacher is None and hint_targets is not None:
        t["hint"] = losses.hint_l1(a, hint_targets)
    if teacher is not None:
        t["hint"] = losses.hint_l1(a, teacher.feat)
        # D_f's loss over [source; target] is a mean over 2B, i.e. half of each domain's mean.
        t["d_f"] = 0.5 * losses.feature_disc_loss(nets.d_f(teacher.feat), nets.d_f(a.detach()))
    else:  # no teacher features here: D_f only sees fakes from this side
        t["d_f"] = 0.5 * losses.bce_to(nets.d_f(a.detach()), 0.0)
    if hp.adv_to_student:
        t["adv"] = 0.5 * losses.generator_loss(_d_f_frozen(nets, a))
    return t


def source_terms(nets: UniKDNets, x: torch.Tensor, y: torch.Tensor, teacher: TeacherOut,
                 sched: StepSchedule, hp: KDHparams) -> dict[str, torch.Tensor]:
    """Source-side UNI-KD terms (cloud): CE, source KD, hint, D_f halves, source domain loss."""
    device = module_device(nets.student)
    x, y, teacher = on(device, x), on(device, y), teacher.to(device)
    h = nets.student.forward_features(x)  # [B, 32]
    logits = nets.student.forward_head(h)  # [B, C]
    d = nets.d_d(grad_reverse(h, sched.alpha))  # [B, 2]
    w = losses.confusion_weights(d)
    w_kd = w.detach() if hp.detach_weights else w
    t = _domain_side(nets, h, teacher, sched, hp)
    t["ce"] = losses.source_ce(logits, y)
    t["dom"] = losses.domain_ce(d, SOURCE_DOMAIN)
    t["kd"] = losses.weighted_kd(teacher.logits, logits, w_kd, hp.temperature)
    t["w_mean"] = w.detach().mean()
    t["loss"] = _total(t, sched, hp)
    t["student_logits"] = logits  # kept for the reference-compat target KD (§8.1)
    t["w"] = w_kd
    if expected_cross_kd(hp):  # T^2 mean_i KL_i on source, unweighted: the cloud's factor
        t["cross_kd"] = losses.weighted_kd(teacher.logits, logits, torch.ones_like(w),
                                           hp.temperature)
    return t


def expected_cross_kd(hp: KDHparams) -> bool:
    return not hp.target_kd and hp.cross_kd == "expected"


def cross_kd_source_grad(src: dict[str, torch.Tensor], w_mean_target: float,
                         sched: StepSchedule) -> None:
    """The cloud's half of beta * mean_t(w) * KD_s: backprop KD_s scaled by the target mean w.

    The reference's cross-domain KD is (1/B) sum_i w_i^t KL_i^s over source/target pairs that
    only random shuffles match, so its expectation is mean_t(w) * mean_s(KL). By the product
    rule its gradient splits into mean_t(w) * grad KL_s (here, on the cloud, with the clients'
    mean w from their replies) and mean_s(KL) * grad mean_t(w) (on the edges, with the scalar
    the round config carries): no per-sample value crosses the wire.
    """
    (sched.beta * w_mean_target * src["cross_kd"]).backward()


def target_terms(nets: UniKDNets, x: torch.Tensor, teacher: TeacherOut | None,
                 sched: StepSchedule, hp: KDHparams,
                 compat_source: tuple[TeacherOut, dict[str, torch.Tensor]] | None = None,
                 source_kd: float = 0.0,
                 prototypes: torch.Tensor | None = None,
                 augment: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Target-side UNI-KD terms (edge): hint, D_f halves, target domain loss, weighted target KD,
    and the label-free terms `im` and `pl` where their weights are on.

    `teacher=None` is the cloud-placed teacher: hint, D_f-real and target KD are dropped.
    `compat_source` reproduces bug §8.1 (centralized only): the "target" KD is the source KL
    again, weighted by the target samples' weights. With `cross_kd="expected"` that term is
    `source_kd` (the cloud's T^2 mean source KL, a constant here) times the mean target w.
    `prototypes` (cloud placement only): the teacher's mean source feature per class [C, 128];
    the hint then pulls each window towards them, mixed by the student's own prediction.
    `augment`: this step's augmentation generator (seeding.augment_generator), needed by the
    pseudo-label term only.
    """
    device = module_device(nets.student)
    x = on(device, x)
    teacher = teacher.to(device) if teacher is not None else None
    prototypes = on(device, prototypes) if prototypes is not None else None
    strong = _strong_logits(nets, x, hp, augment)
    h = nets.student.forward_features(x)  # [B, 32]  forward #1
    hint_targets = None
    if teacher is None and prototypes is not None:
        with torch.no_grad():
            hint_targets = losses.prototype_hint_targets(nets.student.forward_head(h),
                                                         prototypes)
    t = _domain_side(nets, h, teacher, sched, hp, hint_targets)
    if hp.double_target_forward:
        h = nets.student.forward_features(x)  # forward #2: fresh dropout, another BN update
    d = nets.d_d(grad_reverse(h, sched.alpha))  # [B, 2]
    w = losses.confusion_weights(d)
    w_kd = w.detach() if hp.detach_weights else w
    t["dom"] = losses.domain_ce(d, TARGET_DOMAIN)
    if compat_source is not None:
        src_teacher, src_terms = compat_source
        t["kd"] = losses.weighted_kd(src_teacher.logits, src_terms["student_logits"], w_kd,
                                     hp.temperature)
    elif expected_cross_kd(hp):
        t["kd"] = source_kd * w_kd.mean()
    elif teacher is not None and hp.target_kd:
        t["kd"] = losses.weighted_kd(teacher.logits, nets.student.forward_head(h), w_kd,
                                     hp.temperature)
    if hp.im_weight > 0 or strong is not None:  # off: not even the head runs again
        t.update(_label_free_terms(nets.student.forward_head(h), strong, teacher, hp))
    t["w_mean"] = w.detach().mean()
    t["loss"] = _total(t, sched, hp)
    return t


def target_passes(hp: KDHparams) -> int:
    """How many student forwards `target_terms` runs over the target batch: each is one update
    of the BN running statistics, which the cloud needs to compose them as the centralized
    step does (forward #1, the reference's forward #2, the pseudo-label term's strong view)."""
    return 1 + int(hp.double_target_forward) + int(hp.pl_weight > 0)


def _strong_logits(nets: UniKDNets, x: torch.Tensor, hp: KDHparams,
                   augment: torch.Generator | None) -> torch.Tensor | None:
    """The student's logits on a strong view of `x`, or None with the pseudo-label term off.

    Run before forward #1 so that, of this step's BN updates, the last ones are still on plain
    target windows (the statistics evaluation uses); with the term off nothing runs at all."""
    if hp.pl_weight <= 0:
        return None
    if augment is None:
        raise ValueError("distill.pl_weight > 0 needs the step's augmentation generator "
                         "(shared/clock/seeding.py augment_generator); none was given")
    return nets.student(strong_view(x, augment))


def _label_free_terms(logits: torch.Tensor, strong: torch.Tensor | None,
                      teacher: TeacherOut | None, hp: KDHparams) -> dict[str, torch.Tensor]:
    """SHOT-IM on the student's target logits, and the confident pseudo-label CE on the strong
    view (`strong`; None: off). The labels come from the teacher's logits on the plain windows,
    which the edge holds (cached, deterministic); with the teacher in the cloud the edge has
    none, so they come from the student's own detached prediction on the plain windows: the
    term stays usable there (plain FixMatch self-training) instead of refusing the placement."""
    t: dict[str, torch.Tensor] = {}
    if hp.im_weight > 0:
        t["im"] = losses.information_maximization(logits)
    if strong is not None:
        source = teacher.logits if teacher is not None else logits
        labels, keep = losses.confident_labels(source, hp.pl_threshold)
        t["pl"] = losses.pseudo_label_ce(strong, labels, keep)
        t["pl_kept"] = keep.mean()
    return t


def _total(t: dict[str, torch.Tensor], sched: StepSchedule, hp: KDHparams) -> torch.Tensor:
    """lam_ce*CE + (1-beta)*lam_dom*L_dom + beta*L_KD + L_G + L_L1, plus D_f's own loss, plus
    beta*(im_weight*L_IM + pl_weight*L_PL) where those terms are on."""
    zero = torch.zeros((), device=t["d_f"].device)
    total = (hp.lam_ce * t.get("ce", zero) + (1 - sched.beta) * hp.lam_dom * t["dom"]
             + sched.beta * t.get("kd", zero) + t.get("adv", zero) + t.get("hint", zero)
             + t["d_f"])
    # beta weights the label-free terms as it weights the KD: they trust a prediction (the
    # student's own for IM; the teacher's hard label for PL, a KD in all but name), so they should
    # rise with beta as the student's predictions become meaningful (0.1 -> 0.9 over training:
    # the ramp-up FixMatch-like methods give their unlabelled loss), and give way to the domain
    # loss early, as the KD does. The edge has beta from the round config: nothing new is sent.
    # Added only where present, so with both weights at 0 the loss is today's, bit for bit.
    if "im" in t:
        total = total + sched.beta * hp.im_weight * t["im"]
    if "pl" in t:
        total = total + sched.beta * hp.pl_weight * t["pl"]
    return total


LOG_KEYS = ("loss", "ce", "kd", "hint", "dom", "adv", "d_f", "w_mean", "im", "pl", "pl_kept")


def scalars(t: dict[str, torch.Tensor]) -> dict[str, float]:
    """The named parts as floats, for logs, ledgers and equivalence checks."""
    return {k: t[k].item() for k in LOG_KEYS if k in t}


# ---------------------------------------------------------------- DANN teacher (spec §3.2)


def dann_source_terms(teacher: CNN1d, disc: DomainDisc, x: torch.Tensor, y: torch.Tensor,
                      alpha: float, w_cls: float, w_dom: float) -> dict[str, torch.Tensor]:
    """Cloud half of DANN: source CE and the source half of the domain loss."""
    device = module_device(teacher)
    x, y = on(device, x), on(device, y)
    h = teacher.forward_features(x)
    ce = losses.source_ce(teacher.forward_head(h), y)
    dom = losses.domain_ce(disc(grad_reverse(h, alpha)), SOURCE_DOMAIN)
    return {"ce": ce, "dom": dom, "loss": w_cls * ce + w_dom * dom}


def dann_target_terms(teacher: CNN1d, disc: DomainDisc, x: torch.Tensor, alpha: float,
                      weights: DannTargetTerms) -> dict[str, torch.Tensor]:
    """Edge half of DANN: the target half of the domain loss, and the teacher's conditional
    entropy on the target windows when `weights.w_ent` > 0 (a sum of per-window parts)."""
    x = on(module_device(teacher), x)
    h = teacher.forward_features(x)
    t = {"dom": losses.domain_ce(disc(grad_reverse(h, alpha)), TARGET_DOMAIN)}
    t["loss"] = weights.w_dom * t["dom"]
    if weights.w_ent > 0:
        t["ent"] = losses.mean_entropy(teacher.forward_head(h))
        t["loss"] = t["loss"] + weights.w_ent * t["ent"]
    return t


# ---------------------------------------------------------------- gradients and optimizers


def make_optimizers(groups: dict[str, list[nn.Parameter]], lr: float, weight_decay: float,
                    betas: tuple[float, float]) -> dict[str, torch.optim.Optimizer]:
    return {name: torch.optim.Adam(ps, lr=lr, weight_decay=weight_decay, betas=betas)
            for name, ps in groups.items()}


def step_all(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for opt in optimizers.values():
        opt.step()


def zero_all(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
