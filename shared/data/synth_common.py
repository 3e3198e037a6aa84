"""What both synthetic generators share: the settings they read and the per-class counts."""

from __future__ import annotations

from typing import Protocol

import numpy as np

MIN_CLASS_FRACTION = 0.2  # each class keeps at least this share of its unshifted count


class SynthSettings(Protocol):
    """The fields of shared.data.synth.SynthConfig the generators read."""

    seed: int
    shift: float
    windows_per_class: int
    channels: int
    length: int
    classes: int


def class_counts(split: str, cfg: SynthSettings, priors: np.ndarray) -> np.ndarray:
    """Windows per class: the unshifted count redistributed by the domain's class priors."""
    per_class = cfg.windows_per_class if split == "train" else (cfg.windows_per_class + 1) // 2
    floor = max(1, round(MIN_CLASS_FRACTION * per_class))
    return np.maximum(floor, np.round(priors * per_class * len(priors))).astype(np.int64)
