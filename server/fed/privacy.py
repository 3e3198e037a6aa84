"""Client-level differential privacy on the cloud: calibration, accounting, central noise, ledger.

`plan_privacy` turns (epsilon, delta, planned rounds T) into the noise multiplier z with the RDP
accountant of Google's `dp-accounting` (a Gaussian mechanism composed T times, sampling rate 1:
every node is asked every round, so there is no amplification by sampling). After every applied
round the cloud records the epsilon spent so far in that round's row; `write_privacy_ledger`
writes them to `privacy.csv` and a summary to `privacy.json` in the run folder.

Modes (`fed.dp`), see shared/privacy.py for the maths:
- `central`: trusted cloud. It clips every client's whole update (student, D_f, D_d gradients)
  to C, takes the *uniform* mean (weights by sample count would let one large client exceed the
  bound) and adds N(0, (z C / n)^2). The source gradient (the cloud's own data) is not noised.
- `local`: untrusted cloud. Each node clips and noises its own update (client/node/privacy.py); the
  cloud takes the uniform mean of the noisy updates.
In both modes the cloud ignores the clients' BN statistics (source-only BN, as `bn_policy=local`),
and under `local` the nodes do not even send theirs (they echo the received buffers).

Adjacency: one client's entire contribution in a round (add/remove for central, replace for
local). The guarantee covers aggregator `mean`; a data-dependent robust filter
(`norm-bounded`, `trimmed-mean`) runs before clipping and is not covered by the accounting.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from server.fed.aggregate import ClientUpdate
from shared.protocol import wire
from shared.config import RunConfig
from shared.errors import UnikdError
from shared.metrics import median
from shared.privacy import (add_noise, central_noise_std, clip_update,
                            noise_generator)
from shared.runs import write_csv, write_json

log = logging.getLogger(__name__)
CENTRAL_STREAM = 1_000_003  # noise stream id of the cloud (client streams are 1 + client id)


# ---------------------------------------------------------------- accounting


def _event(z: float, rounds: int):
    from dp_accounting import dp_event

    return dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(z), rounds)


def epsilon_after(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon spent by `rounds` Gaussian releases with multiplier z (RDP accountant)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from dp_accounting import rdp

    acc = rdp.RdpAccountant()
    acc.compose(_event(noise_multiplier, rounds))
    return float(acc.get_epsilon(delta))


@lru_cache(maxsize=64)
def calibrate_noise(epsilon: float, delta: float, rounds: int) -> float:
    """The smallest noise multiplier z whose T-fold composition stays within (epsilon, delta)."""
    from dp_accounting import mechanism_calibration as mc
    from dp_accounting import rdp

    return float(mc.calibrate_dp_mechanism(
        rdp.RdpAccountant, lambda z: _event(z, rounds), epsilon, delta,
        mc.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4))


@dataclass(frozen=True)
class PrivacyPlan:
    mode: str  # central | local
    clip: float
    epsilon: float  # target over the planned rounds
    delta: float
    rounds: int  # planned rounds T
    noise_multiplier: float  # z

    def spent(self, releases: int) -> float:
        return epsilon_after(self.noise_multiplier, releases, self.delta)


def check_teacher_source(cfg: RunConfig) -> None:
    """DP covers the UNI-KD rounds. A federated DANN teacher would send raw target gradients
    first, so under DP the teacher must come from a checkpoint or from source data only."""
    if cfg.fed.dp != "off" and not cfg.teacher.checkpoint \
            and cfg.fed.teacher_placement != "source-only":
        raise UnikdError(f"fed.dp={cfg.fed.dp} covers the distillation rounds only: the federated "
                         f"DANN teacher pre-training ({cfg.fed.teacher_placement} placement) sends "
                         f"un-noised target gradients. Set teacher.checkpoint=<teacher.pt> or "
                         f"fed.teacher_placement=source-only")


def plan_privacy(cfg: RunConfig, rounds: int) -> PrivacyPlan | None:
    f = cfg.fed
    if f.dp == "off":
        return None
    z = calibrate_noise(f.dp_epsilon, f.dp_delta, max(rounds, 1))
    plan = PrivacyPlan(f.dp, f.dp_clip, f.dp_epsilon, f.dp_delta, rounds, z)
    log.info("DP %s: clip %.3g, noise multiplier %.4f for (eps %.3g, delta %.1e) over %d rounds",
             plan.mode, plan.clip, z, plan.epsilon, plan.delta, rounds)
    if f.aggregator != "mean":
        log.warning("DP with aggregator %s: the data-dependent filter is outside the accounting",
                    f.aggregator)
    return plan


# ---------------------------------------------------------------- aggregation


def uniform_mean(updates: list[ClientUpdate], keys: tuple[str, ...] = wire.GRAD_KEYS
                 ) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key in keys:
        acc: dict[str, torch.Tensor] = {}
        for u in sorted(updates, key=lambda u: u.client):
            for name, t in u.arrays[key].items():
                acc[name] = t.double() if name not in acc else acc[name] + t.double()
        out[key] = {k: (v / len(updates)).to(torch.float32) for k, v in acc.items()}
    return out


def private_aggregate(updates: list[ClientUpdate], plan: PrivacyPlan, seed: int, rnd: int
                      ) -> tuple[ClientUpdate, dict]:
    """The round's update as ONE ClientUpdate the cloud applies as is (weight 1), plus stats.

    Its BN record is empty, so `compose_bn` leaves the cloud's (source-only) BN statistics.
    """
    norms = []
    if plan.mode == "central":
        clipped = []
        for u in updates:
            arrays, norm = clip_update({k: u.arrays[k] for k in wire.GRAD_KEYS}, plan.clip)
            norms.append(norm)
            clipped.append(ClientUpdate(u.client, u.num_examples, arrays, u.metrics))
        mean = uniform_mean(clipped)
        std = central_noise_std(plan.noise_multiplier, plan.clip, len(updates))
        mean = add_noise(mean, std, noise_generator(seed, CENTRAL_STREAM, rnd))
    else:  # local: the nodes clipped and noised already
        mean = uniform_mean(updates)
        std = 0.0
    agg = ClientUpdate(-1, sum(u.num_examples for u in updates) or 1,
                       {**mean, wire.STUDENT_BN: {}}, {})
    stats = {"dp_clipped": sum(n > plan.clip for n in norms),
             "dp_norm_median": median(norms),
             "dp_noise_std": std}
    return agg, stats


def releases(plan: PrivacyPlan, rnd: int, applied_before: int) -> int:
    """Gaussian releases so far: applied rounds (central) or rounds a node answered (local)."""
    return applied_before + 1 if plan.mode == "central" else rnd


# ---------------------------------------------------------------- run folder


def write_privacy_ledger(run_dir: Path, cfg: RunConfig, result) -> dict:
    """privacy.csv (epsilon after every round) and privacy.json; {} keys for results.json."""
    f = cfg.fed
    if f.dp == "off":
        return {"dp": "off"}
    rows = [{"round": r["round"], "epsilon": r.get("dp_epsilon"), "delta": f.dp_delta,
             "noise_multiplier": r.get("dp_noise_multiplier"), "clip": f.dp_clip,
             "clients": r.get("clients"), "clipped": r.get("dp_clipped"),
             "noise_std": r.get("dp_noise_std")} for r in result.rounds]
    write_csv(run_dir / "privacy.csv", rows)
    spent = rows[-1]["epsilon"] if rows else 0.0
    z = rows[-1]["noise_multiplier"] if rows else None
    write_json(run_dir / "privacy.json", {
        "mode": f.dp, "clip": f.dp_clip, "target_epsilon": f.dp_epsilon, "delta": f.dp_delta,
        "noise_multiplier": z, "epsilon_spent": spent, "rounds": len(rows),
        "accountant": "dp_accounting.rdp.RdpAccountant (Gaussian, sampling rate 1)",
        "bn_statistics": "not released (cloud keeps source-only BN statistics)"})
    return {"dp": f.dp, "dp_epsilon_spent": spent, "dp_delta": f.dp_delta,
            "dp_noise_multiplier": z}
