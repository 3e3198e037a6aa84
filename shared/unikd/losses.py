"""UNI-KD loss terms as pure functions over tensors (spec §3.3).

Each function takes the tensors of one domain and returns a scalar. The engine adds them up;
the centralized trainer and the federated split both call these, never their own copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def source_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Supervised cross-entropy on labelled source windows."""
    return F.cross_entropy(student_logits, labels)


def hint_l1(adapted_student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets-style hint: mean |A(h_S) - h_T| over the batch and feature dimensions."""
    return (adapted_student_feat - teacher_feat).abs().mean()


def class_prototypes(feat: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature per class [C, F]; a class without windows gets the mean of all windows."""
    protos = feat.mean(0).expand(num_classes, -1).clone()
    y = y.to(feat.device)  # the labels stay on the CPU with the data; the features may not
    for c in range(num_classes):
        mask = y == c
        if mask.any():
            protos[c] = feat[mask].mean(0)
    return protos


def prototype_hint_targets(student_logits: torch.Tensor, prototypes: torch.Tensor
                           ) -> torch.Tensor:
    """Per-window hint targets without the teacher: the class prototypes of the teacher's
    features, mixed by the student's own (detached) class probabilities. [B, F]"""
    return F.softmax(student_logits.detach(), dim=1) @ prototypes


def bce_to(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of sigmoid(logits) against a constant target (1 real, 0 fake)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def feature_disc_loss(d_f_real: torch.Tensor, d_f_fake: torch.Tensor) -> torch.Tensor:
    """D_f's own loss on one domain: teacher features real, adapted student features fake."""
    return bce_to(d_f_real, 1.0) + bce_to(d_f_fake, 0.0)


def generator_loss(d_f_on_student: torch.Tensor) -> torch.Tensor:
    """The student's adversarial feature loss: make D_f call adapted student features real."""
    return bce_to(d_f_on_student, 1.0)


def domain_ce(domain_logits: torch.Tensor, domain_label: int) -> torch.Tensor:
    """Data-domain loss for one domain (source = 1, target = 0); the GRL sits before D_d."""
    target = torch.full((domain_logits.shape[0],), domain_label, dtype=torch.long,
                        device=domain_logits.device)
    return F.cross_entropy(domain_logits, target)


def confusion_weights(domain_logits: torch.Tensor) -> torch.Tensor:
    """Joint-knowledge weight w = 1 - |p0 - p1| in [0, 1]: high where D_d cannot tell the domain."""
    p = domain_logits.softmax(dim=1)
    return 1.0 - (p[:, 0] - p[:, 1]).abs()


def kl_per_sample(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """KL(softmax(z_T/T) || softmax(z_S/T)) per sample, via log_softmax (no log(0); spec §8.13)."""
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)


def weighted_kd(teacher_logits: torch.Tensor, student_logits: torch.Tensor, weights: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """T^2 * (1/B) * sum_i w_i KL_i: Hinton KD with per-sample weights."""
    kl = kl_per_sample(teacher_logits, student_logits, temperature)
    return temperature**2 * (weights * kl).mean()


# ---------------------------------------------------------------- label-free target terms


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i H(softmax(z_i)): how unsure the model is about each window, on average."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p_bar), p_bar = (1/B) sum_i softmax(z_i): how evenly the batch spreads over classes.

    log p_bar is a logsumexp of the windows' log-probabilities, so no class with p_bar = 0
    can give log(0). This term couples the windows of a batch (record DP refuses it)."""
    log_p = F.log_softmax(logits, dim=1)
    log_p_bar = torch.logsumexp(log_p, dim=0) - math.log(len(logits))
    return -(log_p_bar.exp() * log_p_bar).sum()


def information_maximization(logits: torch.Tensor) -> torch.Tensor:
    """SHOT-IM (Liang et al. 2020): mean per-window entropy minus the entropy of the batch's
    mean prediction. Minimising it makes each prediction confident and the classes diverse,
    which rules out the trivial minimum of entropy alone (every window in one class)."""
    return mean_entropy(logits) - marginal_entropy(logits)


def confident_labels(label_logits: torch.Tensor, threshold: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard labels [B], keep mask [B] as floats): the arg-max class of softmax(z) (temperature
    1, no gradient), kept where its probability is at least `threshold` (FixMatch's rule)."""
    conf, labels = F.softmax(label_logits.detach(), dim=1).max(dim=1)
    return labels, (conf >= threshold).to(label_logits.dtype)


def pseudo_label_ce(student_logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor
                    ) -> torch.Tensor:
    """(1/B) sum_i keep_i CE(z_i, y_i): FixMatch's unlabelled loss. It divides by the whole
    batch, not by the kept count, so each window's share depends on that window alone (per-window
    DP-SGD can clip it) and a step with few confident windows is a small step."""
    return (keep * F.cross_entropy(student_logits, labels, reduction="none")).mean()
