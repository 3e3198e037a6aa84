"""Adapter, the two discriminators and the gradient-reversal layer (spec §2.5)."""

from __future__ import annotations

import torch
from torch import nn


class GradReverse(torch.autograd.Function):
    """Identity going forward; multiplies the incoming gradient by -alpha going backward."""

    generate_vmap_rule = True  # per-window gradients (torch.func.vmap) pass through it

    @staticmethod
    def forward(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.alpha = inputs[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.alpha * grad, None


def grad_reverse(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return GradReverse.apply(x, alpha)


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, d_out),
    )


class Adapter(nn.Linear):
    """Maps student features (32) to the teacher's feature space (128); used only in training."""

    def __init__(self, student_features: int = 32, teacher_features: int = 128):
        super().__init__(student_features, teacher_features)


class DomainDisc(nn.Module):
    """Two-way domain classifier: D_d on student features, or the DANN teacher's discriminator.

    Output: logits [B, 2]; class 1 = source, class 0 = target (spec §3.2).
    """

    def __init__(self, features: int, hidden: int = 64):
        super().__init__()
        self.net = mlp(features, hidden, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class FeatureDisc(nn.Module):
    """D_f: scores teacher features as real (1) and adapted student features as fake (0).

    Returns a logit [B]; the sigmoid lives in the BCE-with-logits loss for numerical safety.
    """

    def __init__(self, features: int = 128, hidden: int = 64):
        super().__init__()
        self.net = mlp(features, hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)
