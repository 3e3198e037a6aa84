"""The conv blocks' pool: the same values and gradients as nn.MaxPool1d(2, 2, padding=1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shared.privacy.dp_sgd import frozen_bn, per_sample_grads
from shared.unikd.models import pooling
from shared.unikd.models.cnn1d import CNN1d
from shared.unikd.models.pooling import PairMaxPool1d


def with_ties(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).relu()  # post-ReLU zeros tie everywhere
    x[..., 1::4] = 0.5  # and equal positive neighbours in every other window (x[2i-1], x[2i]):
    x[..., 2::4] = 0.5  # the first of the two must take the gradient
    return x


@pytest.mark.parametrize("shape", [(4, 3, 128), (4, 3, 129), (2, 5, 1), (2, 5, 2), (3, 8, 7),
                                   (32, 64, 129)])
def test_values_and_gradients_equal_the_library_pool_bit_for_bit(shape):
    x = with_ties(shape, seed=sum(shape)).requires_grad_()
    ours = PairMaxPool1d().train()
    y_lib, y_ours = F.max_pool1d(x, 2, 2, 1), ours(x)
    assert torch.equal(y_ours, y_lib)
    upstream = torch.randn_like(y_lib)
    g_lib, = torch.autograd.grad(y_lib, x, upstream)
    g_ours, = torch.autograd.grad(ours(x), x, upstream)
    assert torch.equal(g_ours, g_lib)


def test_the_fast_path_runs_only_in_a_training_pass_with_a_gradient(monkeypatch):
    calls = []
    real = pooling.PairMax.apply
    monkeypatch.setattr(pooling.PairMax, "apply", lambda x: calls.append(1) or real(x))
    pool, x = PairMaxPool1d(), torch.randn(2, 3, 16, requires_grad=True)
    pool.train()(x)
    assert calls == [1]
    pool.eval()(x)  # evaluation and export: the library's module
    with torch.no_grad():
        pool.train()(x)
    pool.train()(x.detach())
    pool.train()(x[:1])  # a batch of one (record DP's per-window gradients): the library's
    assert calls == [1]
    assert isinstance(pool, nn.MaxPool1d)
    assert (pool.kernel_size, pool.stride, pool.padding) == (2, 2, 1)


class PairLoss(nn.Module):
    """The loss of one pair of windows, so each element record DP's vmap sees is a batch of
    two and takes the fast path inside the transform."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = CNN1d(9, 6, 16, 32, 5, 1, 0.0).train()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x[0]), y[0])  # x: [1, 2, C, L], one element of vmap


def per_pair_gradients(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Record DP's per-window gradients (shared/privacy/dp_sgd.py), one pair of windows each."""
    loss = PairLoss()
    with frozen_bn(loss):
        return per_sample_grads(loss, (x, y))


def test_gradients_under_vmap_equal_the_library_pools(monkeypatch):
    """Record DP's vmap of grad through the new path (each vmapped element a batch of two
    windows, so the fast path runs inside the transform) gives the library's gradients."""
    x, y = with_ties((3, 2, 9, 128), seed=1), torch.randint(0, 6, (3, 2))
    calls = []
    real = pooling.PairMax.apply
    monkeypatch.setattr(pooling.PairMax, "apply", lambda x: calls.append(1) or real(x))
    ours = per_pair_gradients(x, y)
    assert calls, "the fast path did not run under vmap"
    monkeypatch.setattr(PairMaxPool1d, "fast_path", lambda self, x: False)
    lib = per_pair_gradients(x, y)
    assert all(torch.equal(ours[k], lib[k]) for k in lib)
