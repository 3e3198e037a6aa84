"""Seeded synthetic windows of any shape (C channels x L samples, K classes).

`unikd data synth --channels C --length L --classes K` writes these, so GENERIC data of a
non-HAR shape can be tried (and tested) without downloads. They are waveforms, not physics:

  * class k is a template: a fundamental at f_k cycles per window (evenly spaced between 2 and
    L/8), two harmonics with class-specific amplitudes, and a class-specific phase per channel;
  * each window jitters the frequency (±4 %), the phase, the amplitude and the harmonic mix,
    and adds white noise;
  * domain d > 0 shifts, scaled by `SynthSettings.shift`: per-channel gain and offset, tempo (all
    frequencies scaled by 0.88-0.93 or 1.07-1.12), noise level and class priors.
    Domain 0, the source, is never shifted.

Randomness comes only from `numpy.random.default_rng` seeded by integer tuples, so the same
(domain, split, config) gives bit-identical tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.data.synth_common import SynthSettings, class_counts

_TAG_CLASSES, _TAG_DOMAIN, _TAG_SPLIT = 101, 103, 107
GAIN_SD, OFFSET_SD = 0.25, 0.5  # per-channel log-gain and offset (in signal amplitudes)
TEMPO_LOG = (0.07, 0.12)
NOISE, NOISE_GAIN = 0.3, (0.5, 1.0)
PRIOR_LOGIT_SD = 0.6


def _templates(cfg: SynthSettings) -> dict[str, np.ndarray]:
    """Per class: fundamental (cycles per window), harmonic amplitudes, per-channel phases."""
    rng = np.random.default_rng([cfg.seed, _TAG_CLASSES, cfg.channels, cfg.length, cfg.classes])
    top = max(3.0, cfg.length / 8)
    return {"freq": np.linspace(2.0, top, cfg.classes),
            "harm": rng.uniform(0.1, 0.6, size=(cfg.classes, 2)),
            "phase": rng.uniform(0, 2 * np.pi, size=(cfg.classes, cfg.channels))}


def _shift(domain: int, cfg: SynthSettings) -> dict[str, np.ndarray | float]:
    rng = np.random.default_rng([cfg.seed, domain, _TAG_DOMAIN])
    s = 0.0 if domain == 0 else float(cfg.shift)
    logits = s * PRIOR_LOGIT_SD * rng.normal(size=cfg.classes)
    priors = np.exp(logits - logits.max())
    return {"gain": np.exp(s * GAIN_SD * rng.normal(size=cfg.channels)),
            "offset": s * OFFSET_SD * rng.normal(size=cfg.channels),
            "tempo": float(np.exp(s * rng.choice([-1.0, 1.0]) * rng.uniform(*TEMPO_LOG))),
            "noise": NOISE * (1.0 + s * rng.uniform(*NOISE_GAIN)),
            "priors": priors / priors.sum()}


def generate_generic(domain: int, split_code: int, cfg: SynthSettings
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of one domain: x [N, C, L] float32, y [N] int64."""
    tpl, shift = _templates(cfg), _shift(domain, cfg)
    rng = np.random.default_rng([cfg.seed, domain, _TAG_SPLIT, split_code])
    split = "train" if split_code == 0 else "test"
    labels = np.repeat(np.arange(cfg.classes), class_counts(split, cfg, shift["priors"]))
    labels = labels[rng.permutation(len(labels))]
    n = len(labels)
    t = np.arange(cfg.length) / cfg.length  # [L], one window = 1
    freq = tpl["freq"][labels] * shift["tempo"] * np.exp(0.04 * rng.normal(size=n))  # [n]
    phase = (2 * np.pi * freq[:, None, None] * t + tpl["phase"][labels][:, :, None]
             + rng.uniform(0, 2 * np.pi, size=(n, 1, 1)))  # [n, C, L]
    harm = tpl["harm"][labels] * np.exp(0.2 * rng.normal(size=(n, 2)))  # [n, 2]
    wave = (np.sin(phase) + harm[:, :1, None] * np.sin(2 * phase)
            + harm[:, 1:, None] * np.sin(3 * phase))
    amp = np.exp(0.15 * rng.normal(size=(n, cfg.channels, 1)))
    x = (shift["gain"][:, None] * amp * wave + shift["offset"][:, None]
         + shift["noise"] * rng.normal(size=wave.shape))
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels)
