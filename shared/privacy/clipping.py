"""Client-level DP maths common to both sides: clip a whole update, add seeded Gaussian noise.

A client's *update* is its three gradient records together (`student.grad`, `d_f.grad`,
`d_d.grad`), viewed as one vector: the L2 norm is taken over all of them at once and the whole
vector is scaled down to norm <= C (per-record clipping to C would give a bound of sqrt(3) C).
With `fed.dp_clip_scope: per-network` each record is clipped on its own to C / sqrt(3), so the
whole is still within C but no network's gradient takes the others' share of the bound.

BN running statistics are not part of the clipped vector. Under DP they are **not released**:
a local-DP client sends back the BN buffers it received (no information about its windows), and
the cloud, in both DP modes, keeps source-only BN statistics (as with `bn_policy=local`).

Noise:
- central: the cloud adds N(0, (z C / n)^2) per coordinate to the uniform mean of the n clipped
  updates (sensitivity of the sum to adding/removing one client's update is C);
- local: each client adds N(0, (2 z C)^2) to its own clipped update before it leaves the node
  (any two clipped updates differ by at most 2C, so each report alone is (eps, delta)-DP).

The noise generator is dp_sgd.py's `dp_generator(seed, stream, round, UPDATE_NOISE.number(),
secret)`: keyed by the node's secret (local, client/node/privacy.py) or the cloud's per-run secret
(central, server/fed/dp/), because the run seed is no secret (every node receives it).
With secret None (the in-process simulation only) it is `generator_for(seed, stream, round,
UPDATE_NOISE.number())`, so simulated runs, and their resumes, draw exactly the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from shared.clock.seeding import UPDATE_NOISE, generator_for

Update = Mapping[str, Mapping[str, torch.Tensor]]  # record key -> array name -> tensor


def update_norm(update: Update) -> float:
    """L2 norm of all floating arrays of all records together."""
    sq = 0.0
    for arrays in update.values():
        for t in arrays.values():
            if t.is_floating_point():
                sq += float(t.double().pow(2).sum())
    return math.sqrt(sq)


def clip_update(update: Update, clip: float, per_network: bool = False
                ) -> tuple[dict[str, dict[str, torch.Tensor]], float]:
    """(update scaled to norm <= clip, the norm before clipping). Copies; never in place.

    `per_network` (fed.dp_clip_scope=per-network) clips each record (one network's gradient:
    student with adapter, D_f, D_d) on its own to clip / sqrt(records), so the whole stays
    within `clip` (the sensitivity is unchanged) while the network with the largest gradient
    cannot crowd the others out of the bound. The norm returned is the whole update's."""
    if per_network and len(update) > 1:
        bound = clip / math.sqrt(len(update))
        out: dict[str, dict[str, torch.Tensor]] = {}
        for rec in update:
            part, _ = clip_update({rec: update[rec]}, bound)
            out.update(part)
        return out, update_norm(update)
    norm = update_norm(update)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    out = {rec: {k: (t * scale if t.is_floating_point() else t.clone()) for k, t in arrays.items()}
           for rec, arrays in update.items()}
    return out, norm


def add_noise(update: Update, std: float, gen: torch.Generator
              ) -> dict[str, dict[str, torch.Tensor]]:
    """update + N(0, std^2) on every floating coordinate, drawn from `gen` in a fixed order."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for rec in sorted(update):
        out[rec] = {}
        for k in sorted(update[rec]):
            t = update[rec][k]
            if t.is_floating_point() and std > 0:
                noise = torch.randn(t.shape, generator=gen, dtype=torch.float64) * std
                out[rec][k] = (t.double() + noise).to(t.dtype)
            else:
                out[rec][k] = t.clone()
    return out


def noise_generator(seed: int, stream: int, rnd: int) -> torch.Generator:
    """The seed-only noise stream: what anyone who knows the run seed can regenerate (the
    reproducible simulation's draw; deployed nodes and clouds key theirs with a secret)."""
    return generator_for(seed, stream, rnd, UPDATE_NOISE.number())


def local_noise_std(noise_multiplier: float, clip: float) -> float:
    return 2.0 * noise_multiplier * clip


def central_noise_std(noise_multiplier: float, clip: float, n: int) -> float:
    return noise_multiplier * clip / max(n, 1)


# ---------------------------------------------------------------- the w coordinate
# The expected cross-domain KD (distill.cross_kd=expected) needs, on the cloud, the clients' mean
# confusion weight w in [0, 1]: an aggregate, never a per-window value. Under DP or secure
# aggregation it travels as ONE more coordinate of the update that is clipped, noised and summed
# privately (the record wire.TARGET_W), never beside it. The coordinate is s * w with the public
# scale s = sqrt(share) * C, and the gradient part is clipped to sqrt(1 - share) * C, so the whole
# vector's L2 norm is at most C: the bound every mechanism here is calibrated for (record DP:
# dp_sgd.py, per window; client-level DP and secure aggregation: per update, below).


def w_bounds(clip: float, share: float) -> tuple[float, float]:
    """(the gradient part's L2 bound, the w coordinate's scale s) inside a vector bounded by
    `clip` = C: sqrt(1 - share) C and sqrt(share) C, whose squares sum to C^2."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"fed.w_share={share}: must lie in (0, 1)")
    return math.sqrt(1.0 - share) * clip, math.sqrt(share) * clip


def w_clip(dp_mode: str, dp_clip: float, secagg_clip: float) -> float:
    """The bound C the w coordinate shares: the DP clip under any DP mode (record: one window's
    vector; central, local: one update's), else secure aggregation's own range bound."""
    return dp_clip if dp_mode != "off" else secagg_clip


def clip_update_with_w(update: Update, w_key: str, clip: float, share: float,
                       per_network: bool = False
                       ) -> tuple[dict[str, dict[str, torch.Tensor]], float]:
    """`clip_update` for an update whose record `w_key` holds the w coordinate s * w: every other
    record scaled to norm <= sqrt(1 - share) C, the coordinate clamped into [0, s] (a node that
    sent more cannot exceed the bound). The whole stays within C. Returns (copy, norm before,
    of the gradient part). `per_network`: each network as in `clip_update`, within the
    gradient part's bound."""
    grad_clip, scale = w_bounds(clip, share)
    grads = {k: v for k, v in update.items() if k != w_key}
    clipped, norm = clip_update(grads, grad_clip, per_network)
    clipped[w_key] = {k: t.clamp(0.0, scale) for k, t in update[w_key].items()}
    return clipped, norm


def w_from_coordinate(value: float, scale: float) -> float:
    """The mean w from an aggregated (possibly noised) coordinate: value / s, clamped into
    [0, 1] (post-processing: noise can push the estimate outside the range w lives in)."""
    return min(1.0, max(0.0, value / scale))
