"""Record-level DP-SGD maths (one *window* is the protected unit), used by the edge trainers.

One DP-SGD step on a node holding n windows, with released (noisy) count ñ and expected batch B:

1. Poisson sampling: every window joins the batch independently with rate q = min(1, B / ñ),
   drawn from a generator the cloud cannot reproduce (see `dp_generator`);
2. per-window gradients of the node's loss over *every* trained parameter at once (student,
   adapter, D_f and D_d; or the DANN teacher and its discriminator), with BatchNorm frozen in
   eval mode at the statistics the cloud sent, so no window influences another's gradient;
3. each window's gradient is clipped to L2 norm <= C (one bound over all parameters together);
4. the clipped gradients are summed, N(0, (z C)^2) is added to every coordinate, and the sum is
   divided by the *expected* batch size q ñ (a public constant, not the realised batch size).

A per-window value in [0, 1] may ride with the gradient (`share` > 0, the UNI-KD target loss's
confusion weight w_i, needed by the cloud's half of the expected cross-domain KD): window i's
vector is then (its gradient clipped to sqrt(1 - share) C, sqrt(share) C w_i). Its squared norm
is at most (1 - share) C^2 + share C^2 = C^2, so adding or removing one window still moves the
sum by at most C in L2, exactly the sensitivity the accountant assumes; the value's coordinate
gets the same N(0, (z C)^2) as every other and the same divisor, so it is released by the same
Gaussian mechanism at no extra epsilon. After the division it estimates sqrt(share) C times the
mean w over the node's windows (E[sum over the Poisson batch] = q sum over all windows).

The accountant (server/fed/dp/) composes a Poisson-subsampled Gaussian with rate q and
multiplier z for every such step. The count ñ = n + round(N(0, s^2)) is released once and is
itself a Gaussian mechanism of sensitivity 1 in the same ledger.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from shared.clock.seeding import seed_for


def dp_generator(seed: int, stream: int, step: int, purpose: int, secret: bytes | None
                 ) -> torch.Generator:
    """A generator per (seed, stream, step, purpose), keyed by the node's secret when it has one.

    `purpose` is a number from the table in shared/clock/seeding.py (`DP_POISSON.number(k)`, ...).

    Without a secret the draws are a function of the run seed, which the cloud knows: fine for
    reproducible simulations, worthless as privacy against the cloud. A deployed node mixes in
    a secret the cloud never sees, so neither the sampled windows nor the noise can be
    recomputed and subtracted.
    """
    base = seed_for(seed, stream, step, purpose)
    if secret:
        digest = hashlib.sha256(secret + base.to_bytes(8, "little")).digest()
        base = int.from_bytes(digest[:8], "little") >> 1
    g = torch.Generator()
    g.manual_seed(base)
    return g


def sampling_rate(expected_batch: int, released_count: int) -> float:
    """Poisson rate q = B / ñ (capped at 1): a function of public values only."""
    return min(1.0, expected_batch / max(released_count, 1))


def noisy_count(n: int, std: float, gen: torch.Generator) -> int:
    """n + round(N(0, std^2)), at least 1 (rounding and the floor are post-processing)."""
    if std <= 0:
        return max(n, 1)
    return max(1, int(round(n + float(torch.randn((), generator=gen, dtype=torch.float64)) * std)))


def poisson_batch(n: int, q: float, gen: torch.Generator) -> torch.Tensor:
    """Indices of the windows that join this step's batch, each independently with rate q."""
    return torch.nonzero(torch.rand(n, generator=gen, dtype=torch.float64) < q).flatten()


@contextmanager
def frozen_bn(module: nn.Module) -> Iterator[None]:
    """BatchNorm in eval mode (running statistics as received, never updated); dropout as is."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in bns]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m, was in zip(bns, modes):
            m.train(was)


BOUNDED = "bounded"  # dp_sgd_gradient's key of the per-window value's coordinate (`share` > 0)


def per_sample_grads(loss_module: nn.Module, batch: tuple[torch.Tensor, ...], aux: bool = False
                     ):
    """{parameter name: [B, *shape]}: the gradient of `loss_module(*one_window)` per window.

    `loss_module.forward` takes one-window batches (leading dim 1) and returns a scalar loss, or
    with `aux` a pair (loss, value): the values come back too, as a second result [B].
    Dropout masks differ per window (`randomness="different"`), drawn from the global torch RNG.
    """
    params = {k: p.detach() for k, p in loss_module.named_parameters()}
    buffers = dict(loss_module.named_buffers())

    def one(p: dict[str, torch.Tensor], *sample: torch.Tensor):
        return functional_call(loss_module, (p, buffers), tuple(s.unsqueeze(0) for s in sample))

    dims = (None, *([0] * len(batch)))
    return vmap(grad(one, has_aux=aux), in_dims=dims, randomness="different")(params, *batch)


def per_sample_norms(per_sample: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B]: each window's gradient norm over all parameters together."""
    sq = sum(g.flatten(1).double().pow(2).sum(1) for g in per_sample.values())
    return torch.as_tensor(sq).sqrt()


def clipped_sum(per_sample: Mapping[str, torch.Tensor], clip: float,
                group_of: Callable[[str], str] | None = None,
                bounded: torch.Tensor | None = None, share: float = 0.0
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(sum_i g_i * min(1, C / ||g_i||), the norms before clipping).

    `group_of` (parameter name -> network) clips each network's part of a window's gradient
    on its own, to C / sqrt(G) for G networks, so the whole stays within C (the sensitivity is
    unchanged) while no network's gradient can crowd the others out of the bound.

    `bounded` ([B], each clamped into [0, 1]) with `share` in (0, 1): the gradients are clipped
    to sqrt(1 - share) C instead (each network to that over sqrt(G)), and the sum gets one more
    entry, BOUNDED = [sum_i sqrt(share) C v_i]: every window's whole vector stays within C
    (module docstring).
    """
    if bounded is not None:
        if not 0.0 < share < 1.0:
            raise ValueError(f"share {share}: the per-window value needs a share in (0, 1) of C^2")
        out, norms = clipped_sum(per_sample, math.sqrt(1.0 - share) * clip, group_of)
        scale = math.sqrt(share) * clip
        out[BOUNDED] = (scale * bounded.detach().double().clamp(0.0, 1.0).sum()).reshape(1)
        return out, norms
    if group_of is None:
        norms = per_sample_norms(per_sample)
        factor = (clip / norms.clamp_min(1e-12)).clamp(max=1.0)
        out = {k: torch.einsum("b,b...->...", factor.to(g.dtype), g)
               for k, g in per_sample.items()}
        return out, norms
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, g in per_sample.items():
        groups.setdefault(group_of(k), {})[k] = g
    bound = clip / len(groups) ** 0.5
    out, sq = {}, 0.0
    for part in groups.values():
        part_out, part_norms = clipped_sum(part, bound)
        out.update(part_out)
        sq = sq + part_norms.pow(2)
    return out, torch.as_tensor(sq).sqrt()


def noisy_mean(summed: Mapping[str, torch.Tensor], std: float, expected_batch: float,
               gen: torch.Generator) -> dict[str, torch.Tensor]:
    """(sum + N(0, std^2)) / expected batch, noise drawn in sorted-name order."""
    out = {}
    for k in sorted(summed):
        t = summed[k]
        noise = (torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device) * std
                 if std > 0 else 0.0)  # drawn on the CPU (seeded), added where `t` is
        out[k] = ((t.double() + noise) / expected_batch).to(t.dtype)
    return out


def dp_sgd_gradient(loss_module: nn.Module, data: tuple[torch.Tensor, ...], q: float,
                    clip: float, z: float, expected_batch: float,
                    sample_gen: torch.Generator, noise_gen: torch.Generator,
                    before_forward: Callable[[], None] | None = None,
                    group_of: Callable[[str], str] | None = None, share: float = 0.0
                    ) -> tuple[dict[str, torch.Tensor], int]:
    """One DP-SGD gradient over `data` (tensors indexed by window): (gradient by name, batch size).

    With `share` > 0 the loss module returns (loss, value in [0, 1]) per window and the result
    holds BOUNDED too: (sum_i sqrt(share) C v_i + N(0, (z C)^2)) / expected batch, its noise
    drawn after every parameter's (so the parameters' noise is the draw it is without it).
    An empty Poisson batch still releases noise: the output's distribution must not reveal it.
    """
    idx = poisson_batch(len(data[0]), q, sample_gen)
    if before_forward is not None:
        before_forward()
    with_value = share > 0
    device = next(loss_module.parameters()).device  # the windows move to the weights
    if len(idx):
        batch = tuple(d[idx].to(device) for d in data)
        if with_value:
            per, values = per_sample_grads(loss_module, batch, aux=True)
            summed, _ = clipped_sum(per, clip, group_of, values, share)
        else:
            summed, _ = clipped_sum(per_sample_grads(loss_module, batch), clip, group_of)
    else:
        summed = {k: torch.zeros_like(p) for k, p in loss_module.named_parameters()}
        if with_value:
            summed[BOUNDED] = torch.zeros(1, dtype=torch.float64, device=device)
    value = summed.pop(BOUNDED, None)
    out = noisy_mean(summed, z * clip, expected_batch, noise_gen)
    if value is not None:
        out.update(noisy_mean({BOUNDED: value}, z * clip, expected_batch, noise_gen))
    return out, len(idx)
