"""Client-level differential privacy on the cloud: calibration, accounting, central noise, ledger.

`plan_privacy` turns (epsilon, delta, planned rounds T) into the noise multiplier z with the RDP
accountant of Google's `dp-accounting` (a Gaussian mechanism composed T times, sampling rate 1:
every node is asked every round, so there is no amplification by sampling). After every applied
round the cloud records the epsilon spent so far in that round's row; `write_privacy_ledger`
writes them to `privacy.csv` and a summary to `privacy.json` in the run folder.

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
from pathlib import Path

import torch

from server.fed.aggregate import ClientUpdate
from shared.protocol import wire
from shared.config import RunConfig
from shared.errors import UnikdError
from shared.unikd.metrics import median
from shared.privacy.dp_sgd import dp_generator
from shared.privacy.accounting import RDP_ORDERS, record_epsilon, record_event  # noqa: F401 (re-exported)
from shared.privacy.clipping import add_noise, central_noise_std, clip_update
from shared.clock.seeding import CENTRAL_STREAM, UPDATE_NOISE
from shared.platform.runs import write_csv, write_json
from shared.clock.local_steps import TEACHER_ROUND, LocalSteps

log = logging.getLogger(__name__)


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
    """Client-level DP covers the UNI-KD rounds only. A federated DANN teacher would send raw
    target gradients first, so there the teacher must come from a checkpoint or source data.
    Record-level DP (`record`) covers the federated teacher too: one ledger spans both."""
    if cfg.fed.dp in ("central", "local") and not cfg.teacher.checkpoint \
            and cfg.fed.teacher_placement != "source-only":
        raise UnikdError(f"fed.dp={cfg.fed.dp} covers the distillation rounds only: the federated "
                         f"DANN teacher pre-training ({cfg.fed.teacher_placement} placement) sends "
                         f"un-noised target gradients. Set teacher.checkpoint=<teacher.pt> or "
                         f"fed.teacher_placement=source-only")


def check_record_noise(cfg: RunConfig) -> None:
    """`record_noise: shares` is sound only where the cloud sees nothing but the sum of one
    DP-SGD step per node: secure aggregation on, record DP, one local step (a node's later steps
    would run on weights moved by its own weakly noised gradient)."""
    f = cfg.fed
    if f.record_noise != "shares":
        return
    wrong = [f"{k}={v}" for k, v, ok in (("fed.dp", f.dp, f.dp == "record"),
                                         ("fed.secure_aggregation", f.secure_aggregation,
                                          f.secure_aggregation),
                                         ("fed.local_steps", f.local_steps,
                                          LocalSteps(f.local_steps).takes_noise_shares))
             if not ok]
    if wrong:
        raise UnikdError(f"fed.record_noise=shares needs fed.dp=record, "
                         f"fed.secure_aggregation=true and fed.local_steps=1; got "
                         f"{', '.join(wrong)}")


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


def cloud_secret(grid) -> bytes | None:
    """The key of the cloud's central-noise draws for this run (kept in memory only).

    None (noise from the run seed alone, reproducible) only on a Grid that declares
    `dp_reproducible = True`: the in-process harness, where cloud and nodes share one process.
    Flower's Grids (deployment, Ray simulation) get 32 fresh random bytes.
    """
    return None if getattr(grid, "dp_reproducible", False) else os.urandom(32)


def private_aggregate(updates: list[ClientUpdate], plan: PrivacyPlan, seed: int, rnd: int,
                      secret: bytes | None) -> tuple[ClientUpdate, dict]:
    """The round's update as ONE ClientUpdate the cloud applies as is (weight 1), plus stats.

    Its BN record is empty, so `compose_bn` leaves the cloud's (source-only) BN statistics.
    `secret` keys the central noise (`cloud_secret`); None draws it from the seed alone.
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
        mean = add_noise(mean, std, dp_generator(seed, CENTRAL_STREAM, rnd, UPDATE_NOISE.number(),
                                                 secret))
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
    if f.dp == "record":
        return write_record_ledger(run_dir, cfg, result.privacy)
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
            "dp_noise_multiplier": z, "epsilon": spent, "delta": f.dp_delta}


def write_record_ledger(run_dir: Path, cfg: RunConfig, ledger: RecordLedger | None) -> dict:
    """privacy_ledger.csv (epsilon per client per round, teacher then student phase) and
    privacy.json; the results.json keys (`epsilon` is the largest any node spent)."""
    f = cfg.fed
    rows = ledger.rows if ledger is not None else []
    write_csv(run_dir / "privacy_ledger.csv", rows)
    spent = ledger.max_spent() if ledger is not None else 0.0
    plan = ledger.plan if ledger is not None else None
    per_client = {}
    for r in rows:
        per_client[r["client"]] = r["epsilon"]
    write_json(run_dir / "privacy.json", {
        "mode": "record", "unit": "one window (add/remove) on one node",
        "clip": f.dp_clip, "target_epsilon": f.dp_epsilon, "delta": f.dp_delta,
        "noise_multiplier": plan.noise_multiplier if plan else None,
        "count_noise_std": f.dp_count_std, "released_counts": plan.counts if plan else {},
        "planned_steps": {"teacher": plan.teacher_steps, "student": plan.student_steps}
        if plan else {},
        "epsilon_spent": spent, "epsilon_per_client": per_client,
        "accountant": "dp_accounting RDP: Poisson-subsampled Gaussian per DP-SGD step + "
                      "Gaussian count release, composed per node",
        "withheld": "BN statistics, losses, w_mean; counts released once with noise",
        "evaluation": "confusion matrices on labelled test windows, disjoint from the "
                      "training windows, outside the accounting (docs/privacy.md)"})
    return {"dp": "record", "epsilon": spent, "delta": f.dp_delta,
            "dp_noise_multiplier": plan.noise_multiplier if plan else None}


# ---------------------------------------------------------------- record-level DP (fed.dp=record)

@lru_cache(maxsize=64)
def calibrate_record_noise(epsilon: float, delta: float, count_std: float,
                           steps: tuple[tuple[float, int], ...]) -> float:
    """The smallest multiplier z whose composition over `steps` meets (epsilon, delta)."""
    from dp_accounting import mechanism_calibration as mc
    from dp_accounting import rdp

    if not any(s for _, s in steps):
        return 0.0
    if count_std > 0 and record_epsilon(1.0, count_std, delta, ()) >= epsilon:
        raise UnikdError(f"fed.dp_count_std={count_std} alone spends epsilon >= {epsilon}; "
                         f"raise it or the target epsilon")
    try:
        return float(mc.calibrate_dp_mechanism(
            lambda: rdp.RdpAccountant(list(RDP_ORDERS)),
            lambda z: record_event(z, count_std, steps), epsilon, delta,
            mc.LowerEndpointAndGuess(0.3, 1.0), tol=1e-3))
    except Exception as err:  # dp-accounting raises plain ValueErrors on an impossible target
        raise UnikdError(f"cannot calibrate record-level DP noise for epsilon {epsilon}, delta "
                         f"{delta} over {steps}: {err}") from None


@dataclass(frozen=True)
class RecordPlan:
    """Record-level DP of a run: one multiplier z for every node, each node accounted alone.

    z is calibrated for the largest sampling rate (the smallest released count), so every node
    meets the target; `spent` reports each node's own epsilon with its own rates.
    """

    clip: float
    epsilon: float
    delta: float
    count_std: float
    noise_multiplier: float
    counts: dict[int, int]  # released (noisy) window count per client id
    teacher_batch: int
    student_batch: int
    teacher_steps: int  # planned DP-SGD steps per node
    student_steps: int
    mode: str = "record"

    def rates(self, client: int) -> tuple[float, float]:
        from shared.privacy.dp_sgd import sampling_rate

        n = self.counts[client]
        return sampling_rate(self.teacher_batch, n), sampling_rate(self.student_batch, n)

    def spent(self, client: int, teacher_steps: int, student_steps: int) -> float:
        qt, qs = self.rates(client)
        return record_epsilon(self.noise_multiplier, self.count_std, self.delta,
                              ((qt, teacher_steps), (qs, student_steps)))


def plan_record_privacy(cfg: RunConfig, counts: dict[int, int], teacher_steps: int,
                        student_steps: int, spec) -> RecordPlan:
    """Calibrate z for (eps, delta) over the planned teacher and student steps of every node."""
    f = cfg.fed
    from shared.privacy.dp_sgd import sampling_rate

    n_min = min(counts.values())
    t_batch, s_batch = cfg.teacher.batch_for(spec), cfg.distill.batch_for(spec)
    steps = ((sampling_rate(t_batch, n_min), teacher_steps),
             (sampling_rate(s_batch, n_min), student_steps))
    z = calibrate_record_noise(f.dp_epsilon, f.dp_delta, f.dp_count_std, steps)
    plan = RecordPlan(f.dp_clip, f.dp_epsilon, f.dp_delta, f.dp_count_std, z, dict(counts),
                      t_batch, s_batch, teacher_steps,
                      student_steps)
    log.info("DP record: clip %.3g, noise multiplier %.4f for (eps %.3g, delta %.1e) over %d "
             "teacher + %d student steps per node (q <= %.4f / %.4f)", f.dp_clip, z,
             f.dp_epsilon, f.dp_delta, teacher_steps, student_steps, steps[0][0], steps[1][0])
    if f.dp_count_std <= 0:
        log.warning("fed.dp_count_std=0: window counts are released exactly and are outside "
                    "the accounting (treated as public)")
    if f.aggregator != "mean":
        log.warning("DP with aggregator %s: fine for record DP (post-processing of noisy "
                    "updates), but the filter sees individual noisy updates", f.aggregator)
    return plan


def record_aggregate(updates: list[ClientUpdate], plan: RecordPlan) -> list[ClientUpdate]:
    """Updates weighted by the released counts, without BN statistics (source-only BN)."""
    return [ClientUpdate(u.client, plan.counts.get(u.client, 1),
                         {**{k: u.arrays[k] for k in wire.GRAD_KEYS}, wire.STUDENT_BN: {}},
                         u.metrics) for u in updates]


class RecordLedger:
    """Epsilon per client per round, over the teacher phase and then the student phase.

    A node is charged for every round it was asked to train (it may have computed and replied
    even if its reply was then lost): an upper bound on what it spent.
    """

    def __init__(self, plan: RecordPlan):
        self.plan = plan
        self.steps = {c: [0, 0] for c in plan.counts}
        self.rows: list[dict] = []

    def charge(self, phase: str, rnd: int, clients: list[int], steps: int) -> dict[int, float]:
        i = 0 if phase == "teacher" else 1
        spent = {}
        for c in clients:
            self.steps.setdefault(c, [0, 0])[i] += steps
            eps = self.plan.spent(c, *self.steps[c])
            qt, qs = self.plan.rates(c)
            self.rows.append({"phase": phase, "round": rnd, "client": c, "epsilon": eps,
                              "delta": self.plan.delta, "q": qt if i == 0 else qs,
                              "noise_multiplier": self.plan.noise_multiplier,
                              "teacher_steps": self.steps[c][0],
                              "student_steps": self.steps[c][1]})
            spent[c] = eps
        return spent

    def max_spent(self) -> float:
        return max((r["epsilon"] for r in self.rows), default=0.0)


# ---------------------------------------------------------------- the round loop's entry points


def federated_teacher_rounds(cfg: RunConfig, n_src: int, n_trg: int, spec) -> int:
    """DANN teacher rounds the edges will train (0 with a checkpoint or a source-only teacher)."""
    from shared.clock.steps import steps_per_epoch

    if cfg.teacher.checkpoint or cfg.fed.teacher_placement == "source-only":
        return 0
    t = cfg.teacher
    return steps_per_epoch(n_src, n_trg, t.batch_for(spec)) * t.epochs * t.ensemble


def plan_run_privacy(cfg: RunConfig, rounds: int, counts: dict[int, int], n_src: int, spec
                     ) -> tuple[PrivacyPlan | RecordPlan | None, RecordLedger | None]:
    """The run's DP plan (None when fed.dp=off) and, for record DP, its epsilon ledger."""
    if cfg.fed.dp != "record":
        return plan_privacy(cfg, rounds), None
    teacher = federated_teacher_rounds(cfg, n_src, sum(counts.values()), spec)
    plan = plan_record_privacy(cfg, counts, teacher,
                               LocalSteps(cfg.fed.local_steps).dp_steps(rounds), spec)
    return plan, RecordLedger(plan)


def charge_round(ledger: RecordLedger | None, rnd: int, counts: dict[int, int],
                 local_steps: int, phase: str = "unikd") -> None:
    """Record DP: every node asked to train this round spent `local_steps` DP-SGD steps."""
    if ledger is not None:
        ledger.charge(phase, rnd, sorted(counts), local_steps)


def replay_ledger(ledger: RecordLedger | None, teacher_rounds: int, student_rounds: int,
                  local_steps: int) -> None:
    """A resumed run's ledger: the teacher phase and the rounds before the checkpoint."""
    if ledger is None:
        return
    clients = {c: 1 for c in ledger.plan.counts}
    for r in range(1, teacher_rounds + 1):
        charge_round(ledger, r, clients, TEACHER_ROUND.dp_steps(), "teacher")
    for r in range(1, student_rounds + 1):
        charge_round(ledger, r, clients, local_steps)


def train_records(plan) -> tuple[str, ...]:
    """Records a train reply must carry: record DP sends no BN statistics at all."""
    grads = (wire.STUDENT_GRAD, wire.D_F_GRAD, wire.D_D_GRAD)
    return grads if getattr(plan, "mode", "") == "record" else (*grads, wire.STUDENT_BN)


def dp_aggregate(updates: list[ClientUpdate], plan, ledger: RecordLedger | None, seed: int,
                 rnd: int, applied_before: int, secure: bool = False,
                 secret: bytes | None = None, shares: bool = False
                 ) -> tuple[list[ClientUpdate], dict]:
    """What the cloud applies this round under DP, plus the round's DP columns.

    `secure`: `updates` is the securely aggregated mean; under `central` the nodes clipped it and
    added their noise shares themselves (distributed DP), so the cloud adds nothing.
    `secret`: the key of the central noise (`cloud_secret`).
    `shares`: record DP whose nodes added 1/t noise shares (`fed.record_noise=shares`).
    """
    if secure and plan.mode == "central":
        return updates, {"dp_epsilon": plan.spent(releases(plan, rnd, applied_before)),
                         "dp_noise_multiplier": plan.noise_multiplier,
                         "dp_noise": "distributed (node shares)"}
    if plan.mode == "record":
        row = {"dp_epsilon": ledger.max_spent() if ledger else None,
               "dp_noise_multiplier": plan.noise_multiplier}
        if secure and shares:
            row["dp_noise"] = "distributed (node shares)"
        return record_aggregate(updates, plan), row
    agg, row = private_aggregate(updates, plan, seed, rnd, secret)
    row["dp_epsilon"] = plan.spent(releases(plan, rnd, applied_before))
    row["dp_noise_multiplier"] = plan.noise_multiplier
    return [agg], row
