"""Time-series augmentations as pure functions of (windows, generator): the "strong" view of the
target-side pseudo-label term (FixMatch-style; engine.py `target_terms`).

Every random number comes from the generator the caller passes, never from torch's global RNG:
the caller derives it per (seed, stream, step, local step) from the seed-purpose table
(shared/clock/seeding.py `augment_generator`), so a 1-client federation draws exactly the views
the centralized trainer draws, and the dropout masks (global RNG) are untouched by them.

Windows are [B, C, L] and z-scored per channel (data.normalize), so the strengths below are in
units of a channel's source standard deviation. They are constants, not switches: the brief of
the term is "a strong view", and these are the usual wearable-sensor augmentations (jitter,
magnitude scaling, segment permutation; Um et al. 2017, TS-TCC's strong view) at strengths
that change a window clearly without erasing it. The functions also run under torch.func.vmap
with `randomness="different"` (record-level DP's per-window gradients), one window at a time.

The generator is a CPU one (seeded per step): every draw is made on the CPU and then moved to the
windows' device, so a GPU run draws exactly the views a CPU run draws.
"""

from __future__ import annotations

import torch

JITTER_STD = 0.1  # additive Gaussian noise per sample point
SCALE_STD = 0.2  # one multiplicative factor N(1, 0.2^2) per window and channel
SEGMENTS = 5  # the window is cut into this many near-equal segments, shuffled per window


def jitter(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """x + N(0, std^2), independently at every sample point."""
    return x + std * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)


def scale(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """x times one factor N(1, std^2) per window and channel (a sensor's gain changes)."""
    draw = torch.randn((*x.shape[:-1], 1), generator=gen, dtype=x.dtype)
    factor = 1.0 + std * draw.to(x.device)
    return x * factor


def permute_segments(x: torch.Tensor, segments: int, gen: torch.Generator) -> torch.Tensor:
    """Cut each window's time axis into `segments` near-equal pieces and put them back in a
    random order of its own (all channels of a window move together).

    Vectorised: output position p lies in output piece j = the number of pieces (in the
    window's new order) that end at or before p; it reads source position start(order[j]) + (p - new start j).
    """
    length = x.shape[-1]
    s = max(1, min(segments, length))
    bounds = torch.div(torch.arange(s + 1) * length, s, rounding_mode="floor")  # [s+1]
    starts, sizes = bounds[:-1], bounds[1:] - bounds[:-1]  # [s], [s]
    lead = x.shape[:-2]  # the batch dimension(s)
    order = torch.rand((*lead, s), generator=gen).argsort(dim=-1)  # [B, s]
    new_sizes = sizes.expand(*lead, s).gather(-1, order)
    new_ends = new_sizes.cumsum(-1)
    pos = torch.arange(length).expand(*lead, length)  # [B, L]
    piece = (pos.unsqueeze(-1) >= new_ends.unsqueeze(-2)).sum(-1)  # [B, L]: pieces ended by p
    src = (starts.expand(*lead, s).gather(-1, order).gather(-1, piece)
           + pos - (new_ends - new_sizes).gather(-1, piece))
    return x.gather(-1, src.to(x.device).unsqueeze(-2).expand(x.shape))


def strong_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The strong augmentation: segment permutation, then scaling, then jitter (draws in that
    order from `gen`)."""
    return jitter(scale(permute_segments(x, SEGMENTS, gen), SCALE_STD, gen), JITTER_STD, gen)
