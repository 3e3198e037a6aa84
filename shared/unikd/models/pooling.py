"""The conv blocks' max pool (kernel 2, stride 2, padding 1) with a faster training path.

PyTorch's CPU max pool is fast when no gradient is needed, but in training it runs
`max_pool2d_with_indices`, about 13x slower than the plain pool on our shapes (1.1 ms against
0.085 ms for a [32, 64, 129] block on one core): with dropout's draws it was a quarter of a
teacher's training step. With a window of two the indices are one comparison of the two
neighbours, so `PairMaxPool1d` takes the values from the plain pool, the indices from that
comparison, and the backward pass from PyTorch's own max-pool backward kernel. Values and
gradients are bit for bit those of `nn.MaxPool1d(2, 2, padding=1)`, ties included (the first of
two equal neighbours takes the gradient, as PyTorch's kernel does); tests/test_pooling.py
checks both.

Only a training forward pass on CPU with a gradient, over a batch of more than one window,
takes the new path: evaluation, export (`torch.onnx`, `torch.export`) and CUDA run the
library's module unchanged, and so does a batch of one. That is how record DP's per-window
gradients see each window (torch.func.vmap over single-window batches), where the library's
pool is faster (bench/pool_speed.py: 6.2 against 8.8 ms for a student's 32 per-window
gradients, BENCHMARKS.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PairMax(torch.autograd.Function):
    """max_pool1d(x, 2, 2, padding=1) whose backward routes through precomputed indices."""

    generate_vmap_rule = True  # record DP's per-window gradients (torch.func.vmap) pass through

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        length = x.shape[-1]
        windows = length // 2 + 1
        padded = F.pad(x, (1, 2 * windows - length - 1), value=-math.inf)
        right_wins = padded[..., 1::2] > padded[..., 0::2]  # ties keep the left element
        first = torch.arange(-1, 2 * windows - 1, 2, device=x.device)
        indices = (first + right_wins).clamp(0, length - 1)  # into x, as PyTorch's kernel's
        return F.max_pool1d(x, 2, 2, 1), indices

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor,  # type: ignore[override]
                 _grad_indices: torch.Tensor) -> torch.Tensor:
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad.unsqueeze(-2), x.unsqueeze(-2), [1, 2], [1, 2], [0, 1], [1, 1], False,
            indices.unsqueeze(-2)).squeeze(-2)


class PairMaxPool1d(nn.MaxPool1d):
    """`nn.MaxPool1d(kernel_size=2, stride=2, padding=1)`, faster to train on CPU."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_path(x):
            return PairMax.apply(x)[0]
        return super().forward(x)

    def fast_path(self, x: torch.Tensor) -> bool:
        return (self.training and torch.is_grad_enabled() and x.requires_grad
                and x.device.type == "cpu" and x.dim() == 3 and x.shape[0] > 1
                and not torch.jit.is_scripting() and not torch.compiler.is_compiling())
