"""Client-level differential privacy on the cloud (`fed.dp: central|local`): calibration,
accounting and the central noise.

`plan_privacy` turns (epsilon, delta, planned rounds T) into the noise multiplier z with the RDP
accountant of Google's `dp-accounting` (a Gaussian mechanism composed T times, sampling rate 1:
every node is asked every round, so there is no amplification by sampling). A cross-device run
with a Poisson cohort (`fed.clients_per_round` = E of `fed.clients` = K,
`fed.cohort_sampling: poisson`, server/fed/cohort.py) is DP-FedAvg (McMahan et al. 2018): each
client takes part in a round with probability q = E/K, the composition is of T Poisson-sampled
Gaussians (amplification by sampling), and the central mean divides the clipped sum by the
expected cohort size E, not by the number that came (that number is not private). After every applied
round the cloud records the epsilon spent so far in that round's row; report.py
(`write_privacy_ledger`) writes them to `privacy.csv` and a summary to `privacy.json`.

Modes (`fed.dp`), see shared/privacy/clipping.py for the maths:
- `central`: trusted cloud. It clips every client's whole update (student, D_f, D_d gradients)
  to C, takes the *uniform* mean (weights by sample count would let one large client exceed the
  bound) and adds N(0, (z C / n)^2). The source gradient (the cloud's own data) is not noised.
  The noise is drawn from a generator keyed by the cloud's own secret (`cloud_secret`, 32
  random bytes per run, never written anywhere): the run seed travels to every node in the
  round config and sits in config.yaml, so seed-only noise could be regenerated and subtracted
  by anyone who sees the broadcast models. Only the in-process harness (a Grid that declares
  `dp_reproducible`) draws from the seed alone, so simulations and their resumes reproduce.
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
import os
from dataclasses import dataclass
from functools import lru_cache

import torch

from server.fed.aggregate import ClientUpdate
from shared.protocol import wire
from shared.config import RunConfig
from shared.unikd.metrics import median
from shared.privacy.dp_sgd import dp_generator
from shared.privacy.clipping import add_noise, central_noise_std, clip_update, clip_update_with_w
from shared.clock.seeding import CENTRAL_STREAM, UPDATE_NOISE

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- accounting


def _event(z: float, rounds: int, rate: float = 1.0):
    from dp_accounting import dp_event

    one = dp_event.GaussianDpEvent(z)
    if rate < 1.0:  # each client in a round's cohort with probability `rate` (Poisson)
        one = dp_event.PoissonSampledDpEvent(rate, one)
    return dp_event.SelfComposedDpEvent(one, rounds)


def epsilon_after(noise_multiplier: float, rounds: int, delta: float, rate: float = 1.0
                  ) -> float:
    """Epsilon spent by `rounds` Gaussian releases with multiplier z (RDP accountant), each of
    a Poisson cohort sampled at `rate` (1: every client every round)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from dp_accounting import rdp

    acc = rdp.RdpAccountant()
    acc.compose(_event(noise_multiplier, rounds, rate))
    return float(acc.get_epsilon(delta))


@lru_cache(maxsize=64)
def calibrate_noise(epsilon: float, delta: float, rounds: int, rate: float = 1.0) -> float:
    """The smallest noise multiplier z whose T-fold composition stays within (epsilon, delta)."""
    from dp_accounting import mechanism_calibration as mc
    from dp_accounting import rdp

    return float(mc.calibrate_dp_mechanism(
        rdp.RdpAccountant, lambda z: _event(z, rounds, rate), epsilon, delta,
        mc.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4))


@dataclass(frozen=True)
class PrivacyPlan:
    mode: str  # central | local
    clip: float
    epsilon: float  # target over the planned rounds
    delta: float
    rounds: int  # planned rounds T
    noise_multiplier: float  # z
    sampling_rate: float = 1.0  # q of a Poisson cohort (central DP); 1: every client
    expected_cohort: float = 0.0  # E = qK, the central mean's divisor; 0: the replies' count
    per_network: bool = False  # fed.dp_clip_scope=per-network: each network to C / sqrt(3)

    def spent(self, releases: int) -> float:
        return epsilon_after(self.noise_multiplier, releases, self.delta, self.sampling_rate)

    @property
    def count_std(self) -> float:
        """Client-level DP releases no window counts: nothing to noise on the nodes."""
        return 0.0


def plan_privacy(cfg: RunConfig, rounds: int) -> PrivacyPlan | None:
    f = cfg.fed
    if f.dp == "off":
        return None
    poisson = f.dp == "central" and f.cohort_sampling == "poisson" and f.clients_per_round
    rate = min(1.0, f.clients_per_round / f.clients) if poisson else 1.0
    z = calibrate_noise(f.dp_epsilon, f.dp_delta, max(rounds, 1), rate)
    plan = PrivacyPlan(f.dp, f.dp_clip, f.dp_epsilon, f.dp_delta, rounds, z, rate,
                       float(f.clients_per_round) if poisson else 0.0,
                       f.dp_clip_scope == "per-network")
    log.info("DP %s: clip %.3g (%s), noise multiplier %.4f for (eps %.3g, delta %.1e) over %d "
             "rounds%s", plan.mode, plan.clip, f.dp_clip_scope, z, plan.epsilon, plan.delta, rounds,
             f", Poisson cohorts at q={rate:.4g} (expected {f.clients_per_round})"
             if poisson else "")
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


def cloud_secret(grid) -> bytes | None:
    """The key of the cloud's central-noise draws for this run (kept in memory only).

    None (noise from the run seed alone, reproducible) only on a Grid that declares
    `dp_reproducible = True`: the in-process harness, where cloud and nodes share one process.
    Flower's Grids (deployment, Ray simulation) get 32 fresh random bytes.
    """
    return None if getattr(grid, "dp_reproducible", False) else os.urandom(32)


def private_aggregate(updates: list[ClientUpdate], plan: PrivacyPlan, seed: int, rnd: int,
                      secret: bytes | None, w_share: float | None = None
                      ) -> tuple[ClientUpdate, dict]:
    """The round's update as ONE ClientUpdate the cloud applies as is (weight 1), plus stats.

    Its BN record is empty, so `compose_bn` leaves the cloud's (source-only) BN statistics.
    `secret` keys the central noise (`cloud_secret`); None draws it from the seed alone.
    `w_share` (the expected cross KD): every update carries the mean w's coordinate
    (wire.TARGET_W), clipped with it into C (`clip_update_with_w`) and noised with it; its noise
    is drawn after every gradient coordinate's ("target.w" sorts last).
    """
    norms = []
    keys = wire.W_UPDATE_KEYS if w_share is not None else wire.GRAD_KEYS
    if plan.mode == "central":
        clipped = []
        for u in updates:
            if wire.TARGET_W in u.arrays:  # the mean w's coordinate, within the same bound C
                arrays, norm = clip_update_with_w({k: u.arrays[k] for k in wire.W_UPDATE_KEYS},
                                                  wire.TARGET_W, plan.clip, w_share,
                                                  plan.per_network)
            else:
                arrays, norm = clip_update({k: u.arrays[k] for k in wire.GRAD_KEYS}, plan.clip,
                                           plan.per_network)
            norms.append(norm)
            clipped.append(ClientUpdate(u.client, u.num_examples, arrays, u.metrics))
        mean = uniform_mean(clipped, keys)
        divisor = len(updates)
        if plan.expected_cohort:  # DP-FedAvg: the clipped sum over the expected cohort size
            divisor = plan.expected_cohort
            mean = {k: {n: t * (len(updates) / divisor) for n, t in rec.items()}
                    for k, rec in mean.items()}
        std = central_noise_std(plan.noise_multiplier, plan.clip, divisor)
        mean = add_noise(mean, std, dp_generator(seed, CENTRAL_STREAM, rnd, UPDATE_NOISE.number(),
                                                 secret))
    else:  # local: the nodes clipped and noised already (the w coordinate included)
        mean = uniform_mean(updates, keys)
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
