"""Seeded HAR-like synthetic cross-domain data: the embedded default data set (no downloads).

Each window mimics one UCI-HAR window from a waist-worn phone: 9 channels x 128 samples
(50 Hz, 2.56 s) in the order body_acc x,y,z (g); body_gyro x,y,z (rad/s); total_acc x,y,z (g),
with total = body + gravity. Sensor axes: x points up the trunk, y lateral, z forward.

Physics of the six classes
  * walk / upstairs / downstairs: the trunk oscillates at the step frequency f (about 1.6-2.2 Hz,
    upstairs slowest, downstairs fastest). Vertical acceleration is a harmonic series in the step
    phase; forward acceleration and trunk pitch rate also follow the step, while lateral sway,
    roll and yaw follow the stride (f/2, left-right alternation). Upstairs has a slow push-up /
    quick drop (2nd harmonic in quadrature, a skewed profile) and a forward lean; downstairs has
    the time-reversed skew plus sharp in-phase harmonics (heel impacts) and larger amplitude.
  * sit / stand / lie: no gait, only slow postural sway and a little tremor; the classes differ
    in the gravity direction the trunk tilt puts into total_acc (stand upright, sit reclined by
    about 20 degrees, lie supine with gravity on z). Sit and stand overlap a little, as in HAR.
Person-level variability comes from a pool of pseudo-persons (cadence, vigour, posture, gait
style, how the phone sits on the belt) shared by every domain; each window picks a person and
adds its own jitter (phase, amplitude, frequency, harmonic mix, tilt, noise level).

Domain shift (fixed per domain from (seed, domain); domain 0, the source, is never shifted;
every magnitude is scaled by `SynthConfig.shift`, so shift=0 gives one distribution for all):
  * sensor mounting: one random 3-D rotation applied alike to the acc, gyro and gravity triads;
  * calibration: per-axis gain of the accelerometer and gyroscope, accelerometer offset
    (it cancels out of body_acc, whose gravity estimate absorbs it) and gyro bias;
  * tempo: the continuous-time signal is sampled at t * tempo, i.e. a sampling-rate mismatch
    or a faster/slower population; it warps gait and sway alike;
  * noise: a noisier sensor (white noise, shared by body_acc and total_acc as in the real device);
  * class priors: targets see the activities in different proportions (train and test alike).
Randomness only ever comes from `numpy.random.default_rng` seeded by tuples of integers, so the
same (domain, split, config) always yields bit-identical tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.data.synth_common import class_counts
from shared.errors import ConfigError

FS = 50.0  # Hz
LENGTH = 128
CHANNELS = 9
CLASSES = 6
WALK, UPSTAIRS, DOWNSTAIRS, SIT, STAND, LIE = range(CLASSES)
GAIT_CLASSES = (WALK, UPSTAIRS, DOWNSTAIRS)
PERSONS = 12

# Stream tags keep the seeded generators of different purposes independent.
_TAG_PERSONS, _TAG_DOMAIN, _TAG_SPLIT = 11, 23, 37
_SPLIT_CODES = {"train": 0, "test": 1}

# Shift magnitudes at shift=1.0 (tuned so a source-only student loses roughly 20-40 MF1 points).
TILT_DEG = (15.0, 20.0)  # mounting tilt (moves gravity between axes): angle range
YAW_DEG = (15.0, 25.0)  # mounting yaw about the trunk axis (mixes lateral and forward)
GAIN_SD = 0.10  # log-gain standard deviation per axis
ACC_OFFSET_SD = 0.05  # g
GYRO_BIAS_SD = 0.02  # rad/s
TEMPO_LOG = (0.07, 0.12)  # |log tempo| range; sign random
NOISE_GAIN = (0.8, 1.2)  # extra noise, as a multiple of the base noise
PRIOR_LOGIT_SD = 0.6  # spread of class-prior logits

ACC_NOISE, GYRO_NOISE = 0.01, 0.02  # base sensor white noise (g, rad/s)
NOISE_JITTER = 0.3  # log-sd of the per-window noise level (battery, vibration, clothing)
PERSON_MOUNT_DEG = 5.0  # how differently each person wears the phone


@dataclass(frozen=True)
class SynthConfig:
    domains: int = 4  # domain "0" is the source; 1.. are shifted targets
    windows_per_class: int = 80  # train windows per class per domain (before class-prior shift)
    shift: float = 1.0  # domain-gap strength, 0 = no shift (all domains same distribution)
    seed: int = 0
    # Any other shape than HAR's 9 x 128, 6 classes uses the generic waveform generator
    # (shared/data/synth_generic.py); the default output is the HAR-like data, unchanged.
    channels: int = CHANNELS
    length: int = LENGTH
    classes: int = CLASSES

    @property
    def har_shape(self) -> bool:
        return (self.channels, self.length, self.classes) == (CHANNELS, LENGTH, CLASSES)


@dataclass(frozen=True)
class Gait:
    """Template of one locomotion class; amplitudes in g and rad/s."""

    step_hz: float
    vert: tuple[float, float, float]  # vertical acc amplitude of harmonics 1..3 of the step
    vert_phase: tuple[float, float, float]  # their phases (the profile's skew and peakiness)
    fwd: float  # forward acc, at the step frequency
    lat: float  # lateral acc, at the stride frequency
    pitch: float  # gyro about y, at the step frequency
    roll: float  # gyro about z, at the stride frequency
    yaw: float  # gyro about x, at the stride frequency
    lean_deg: float  # forward trunk lean


GAITS: dict[int, Gait] = {
    WALK: Gait(1.9, (0.22, 0.08, 0.02), (0.0, 0.0, 0.0), 0.12, 0.07, 0.35, 0.20, 0.30, 3.0),
    UPSTAIRS: Gait(1.6, (0.18, 0.09, 0.03), (0.0, np.pi / 2, 0.0), 0.09, 0.06, 0.50, 0.15, 0.20,
                   10.0),
    DOWNSTAIRS: Gait(2.15, (0.28, 0.15, 0.09), (0.0, -np.pi / 2, 0.0), 0.15, 0.09, 0.30, 0.25,
                     0.25, -3.0),
}


@dataclass(frozen=True)
class Posture:
    """Template of one static class: trunk tilt and how much the body sways."""

    pitch_deg: float  # backward/forward tilt of the trunk (90 = supine)
    pitch_sd: float  # per-window tilt jitter
    roll_sd: float
    sway: float  # postural sway amplitude (g)


POSTURES: dict[int, Posture] = {
    SIT: Posture(18.0, 6.0, 4.0, 0.004),
    STAND: Posture(4.0, 5.0, 3.0, 0.010),
    LIE: Posture(85.0, 6.0, 15.0, 0.002),
}


@dataclass(frozen=True)
class DomainShift:
    """The fixed distortion of one domain (identity for the source or shift=0)."""

    rotation: np.ndarray  # [3, 3] sensor mounting rotation
    acc_gain: np.ndarray  # [3]
    acc_offset: np.ndarray  # [3] g
    gyro_gain: np.ndarray  # [3]
    gyro_bias: np.ndarray  # [3] rad/s
    tempo: float
    noise_scale: float
    priors: np.ndarray  # [CLASSES], sums to 1


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula: rotation by `angle` (rad) about the unit vector `axis`."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _tilt(pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """[N, 3, 3] world->sensor rotations for a trunk pitched about y then rolled about z."""
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    zero, one = np.zeros_like(pitch), np.ones_like(pitch)
    # Pitching by +90 deg (lying on the back) moves gravity from +x onto +z.
    ry = np.stack([np.stack([cp, zero, -sp], -1), np.stack([zero, one, zero], -1),
                   np.stack([sp, zero, cp], -1)], -2)
    rz = np.stack([np.stack([cr, sr, zero], -1), np.stack([-sr, cr, zero], -1),
                   np.stack([zero, zero, one], -1)], -2)
    return rz @ ry


def domain_shift(domain: int, cfg: SynthConfig) -> DomainShift:
    """Draw the domain's distortion; draws happen for every domain, then scale by shift."""
    rng = np.random.default_rng([cfg.seed, domain, _TAG_DOMAIN])
    s = 0.0 if domain == 0 else float(cfg.shift)
    # Tilt about a random horizontal axis, then yaw: a random 3-D rotation whose severity does
    # not hinge on luck (a pure yaw would leave gravity, hence the postures, untouched).
    azimuth = rng.uniform(0, 2 * np.pi)
    tilt_axis = np.array([0.0, np.cos(azimuth), np.sin(azimuth)])
    tilt = np.deg2rad(rng.uniform(*TILT_DEG)) * s
    yaw = np.deg2rad(rng.choice([-1.0, 1.0]) * rng.uniform(*YAW_DEG)) * s
    rotation = _rotation(tilt_axis, tilt) @ _rotation(np.array([1.0, 0.0, 0.0]), yaw)
    acc_gain = np.exp(s * GAIN_SD * rng.normal(size=3))
    acc_offset = s * ACC_OFFSET_SD * rng.normal(size=3)
    gyro_gain = np.exp(s * GAIN_SD * rng.normal(size=3))
    gyro_bias = s * GYRO_BIAS_SD * rng.normal(size=3)
    tempo = float(np.exp(s * rng.choice([-1.0, 1.0]) * rng.uniform(*TEMPO_LOG)))
    noise_scale = 1.0 + s * rng.uniform(*NOISE_GAIN)
    logits = s * PRIOR_LOGIT_SD * rng.normal(size=CLASSES)
    priors = np.exp(logits - logits.max())
    return DomainShift(rotation, acc_gain, acc_offset, gyro_gain, gyro_bias, tempo,
                       noise_scale, priors / priors.sum())


def _persons(cfg: SynthConfig) -> dict[str, np.ndarray]:
    """The pseudo-person pool shared by all domains (so shift=0 means one distribution)."""
    rng = np.random.default_rng([cfg.seed, _TAG_PERSONS])
    return {
        "cadence": np.exp(0.06 * rng.normal(size=PERSONS)),  # relative step frequency
        "vigour": np.exp(0.15 * rng.normal(size=PERSONS)),  # relative motion amplitude
        "pitch": np.deg2rad(4.0 * rng.normal(size=PERSONS)),  # habitual posture
        "roll": np.deg2rad(3.0 * rng.normal(size=PERSONS)),
        "style": 0.25 * rng.normal(size=(PERSONS, 3)),  # relative harmonic mix of the gait
        "mount": np.stack([_random_rotation(rng, PERSON_MOUNT_DEG) for _ in range(PERSONS)]),
    }


def _random_rotation(rng: np.random.Generator, sd_deg: float) -> np.ndarray:
    """A small rotation about a random axis, angle ~ N(0, sd_deg)."""
    axis = rng.normal(size=3)
    return _rotation(axis / np.linalg.norm(axis), np.deg2rad(sd_deg * rng.normal()))


def _gait_motion(
    gait: Gait, t: np.ndarray, rng: np.random.Generator, person: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World-frame body acc and trunk rates [n, 3, L] plus trunk lean [n] for n windows."""
    n = len(person["cadence"])
    f = gait.step_hz * person["cadence"] * np.exp(0.05 * rng.normal(size=n))
    phase = 2 * np.pi * f[:, None] * t + rng.uniform(0, 2 * np.pi, size=(n, 1))  # step phase
    stride = phase / 2 + rng.choice([0.0, np.pi], size=(n, 1))  # which foot leads
    amp = person["vigour"] * np.exp(0.12 * rng.normal(size=n))
    mix = np.exp(person["style"] + 0.2 * rng.normal(size=(n, 3)))

    def jitter(scale: float) -> np.ndarray:
        return (scale * amp * np.exp(0.15 * rng.normal(size=n)))[:, None]

    vert = sum(
        gait.vert[k] * mix[:, k:k + 1]
        * np.cos((k + 1) * phase + gait.vert_phase[k] + 0.3 * rng.normal(size=(n, 1)))
        for k in range(3)
    ) * amp[:, None]
    fwd = jitter(gait.fwd) * np.cos(phase + np.pi / 2 + 0.3 * rng.normal(size=(n, 1)))
    lat = jitter(gait.lat) * np.cos(stride)
    acc = np.stack([vert, lat, fwd], axis=1)
    pitch = jitter(gait.pitch) * np.cos(phase + np.pi / 3)
    roll = jitter(gait.roll) * np.cos(stride + np.pi / 4)
    yaw = jitter(gait.yaw) * np.cos(stride)
    gyro = np.stack([yaw, pitch, roll], axis=1)  # rates about x, y, z
    lean = np.deg2rad(gait.lean_deg + 3.0 * rng.normal(size=n))
    return acc, gyro, lean


def _static_motion(
    posture: Posture, t: np.ndarray, rng: np.random.Generator, n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sway + tremor body acc and rates [n, 3, L], plus the trunk pitch and roll [n]."""
    sway_hz = rng.uniform(0.15, 0.6, size=(n, 3, 1))
    sway = posture.sway * np.exp(0.3 * rng.normal(size=(n, 3, 1)))
    tremor_hz = rng.uniform(8.0, 12.0, size=(n, 1, 1))  # physiological tremor band
    acc = (sway * np.sin(2 * np.pi * sway_hz * t + rng.uniform(0, 2 * np.pi, size=(n, 3, 1)))
           + 0.002 * np.sin(2 * np.pi * tremor_hz * t + rng.uniform(0, 2 * np.pi, size=(n, 3, 1))))
    gyro = 3.0 * sway * np.cos(2 * np.pi * sway_hz * t + rng.uniform(0, 2 * np.pi, size=(n, 3, 1)))
    pitch = np.deg2rad(posture.pitch_deg + posture.pitch_sd * rng.normal(size=n))
    roll = np.deg2rad(posture.roll_sd * rng.normal(size=n))
    return acc, gyro, pitch, roll


def _windows(
    labels: np.ndarray, shift: DomainShift, cfg: SynthConfig, rng: np.random.Generator,
) -> np.ndarray:
    """[N, 9, L] float64 windows for the given labels, shift applied."""
    n = len(labels)
    t = shift.tempo * np.arange(LENGTH) / FS  # time warp = sampling-rate mismatch
    pool = _persons(cfg)
    who = rng.integers(0, PERSONS, size=n)
    acc, gyro = np.zeros((n, 3, LENGTH)), np.zeros((n, 3, LENGTH))
    pitch, roll = pool["pitch"][who].copy(), pool["roll"][who].copy()
    for c in range(CLASSES):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        if c in GAITS:
            person = {k: v[who[idx]] for k, v in pool.items()}
            acc[idx], gyro[idx], lean = _gait_motion(GAITS[c], t, rng, person)
            pitch[idx] += lean
        else:
            acc[idx], gyro[idx], p, r = _static_motion(POSTURES[c], t, rng, len(idx))
            pitch[idx] += p
            roll[idx] += r
    tilt = pool["mount"][who] @ _tilt(pitch, roll)  # world -> sensor, per window
    gravity = tilt[:, :, 0]  # specific force of gravity (+1 g up) seen by the sensor: [n, 3]
    body = np.einsum("nij,njl->nil", tilt, acc)
    rates = pool["mount"][who] @ gyro  # rates are about body axes; only the mounting turns them
    # Mounting rotation acts on every triad alike; then per-axis calibration and noise.
    r = shift.rotation
    body, rates, gravity = r @ body, r @ rates, gravity @ r.T
    level = shift.noise_scale * np.exp(NOISE_JITTER * rng.normal(size=(n, 1, 1)))
    acc_noise = ACC_NOISE * level * rng.normal(size=(n, 3, LENGTH))
    gyro_noise = GYRO_NOISE * level * rng.normal(size=(n, 3, LENGTH))
    body_acc = shift.acc_gain[:, None] * body + acc_noise
    body_gyro = shift.gyro_gain[:, None] * rates + shift.gyro_bias[:, None] + gyro_noise
    total_acc = (shift.acc_gain[:, None] * (body + gravity[:, :, None]) + shift.acc_offset[:, None]
                 + acc_noise)
    return np.concatenate([body_acc, body_gyro, total_acc], axis=1)


def validate(cfg: SynthConfig) -> None:
    """Reject settings the generator cannot honour (a ConfigError reads well on the CLI)."""
    limits = (("domains", cfg.domains, 1), ("windows_per_class", cfg.windows_per_class, 1),
              ("shift", cfg.shift, 0), ("seed", cfg.seed, 0), ("channels", cfg.channels, 1),
              ("length", cfg.length, 16), ("classes", cfg.classes, 2))
    for key, value, least in limits:
        if not value >= least:  # also catches NaN shift
            raise ConfigError(key, f"must be >= {least}, got {value}")


def generate_domain(domain: int, split: str, cfg: SynthConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of one domain: x [N, 9, 128] float32, y [N] int64, bit-identical per input
    (x [N, C, L] from the generic generator when the config asks for another shape)."""
    validate(cfg)
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {tuple(_SPLIT_CODES)}, got '{split}'")
    if domain < 0:
        raise ValueError(f"domain must be >= 0, got {domain}")
    if not cfg.har_shape:
        from shared.data.synth_generic import generate_generic

        return generate_generic(domain, _SPLIT_CODES[split], cfg)
    shift = domain_shift(domain, cfg)
    rng = np.random.default_rng([cfg.seed, domain, _TAG_SPLIT, _SPLIT_CODES[split]])
    labels = np.repeat(np.arange(CLASSES), class_counts(split, cfg, shift.priors))
    labels = labels[rng.permutation(len(labels))]
    x = _windows(labels, shift, cfg, rng)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels)


def write_synthetic(out_dir: str | Path, cfg: SynthConfig) -> list[Path]:
    """Write `train_<d>.pt` / `test_<d>.pt` ({"samples", "labels"}) for every domain."""
    validate(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for d in range(cfg.domains):
        for split in _SPLIT_CODES:
            x, y = generate_domain(d, split, cfg)
            path = out / f"{split}_{d}.pt"
            torch.save({"samples": x, "labels": y}, path)
            paths.append(path)
    return paths
