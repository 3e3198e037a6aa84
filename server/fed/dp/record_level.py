"""Record-level differential privacy on the cloud (`fed.dp: record`): the plan and the ledger.

Every node runs per-window DP-SGD (client/node/record_dp.py) for the federated DANN teacher and
the UNI-KD rounds, and releases its window count once, with Gaussian noise. The cloud calibrates
one noise multiplier z for the whole run (`plan_record_privacy`: the node with the smallest
released count, the largest sampling rate, meets the target), weights the nodes' updates by
their released counts (`record_aggregate`) and charges every node for every round it was asked
to train (`RecordLedger`). The accounting itself is shared/privacy/accounting.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from server.fed.aggregate import ClientUpdate
from shared.config import RunConfig
from shared.errors import UnikdError
from shared.privacy.accounting import RDP_ORDERS, record_epsilon, record_event
from shared.privacy.dp_sgd import sampling_rate
from shared.protocol import wire

log = logging.getLogger(__name__)


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
    n_min = min(counts.values())
    t_batch, s_batch = cfg.teacher.batch_for(spec), cfg.distill.batch_for(spec)
    steps = ((sampling_rate(t_batch, n_min), teacher_steps),
             (sampling_rate(s_batch, n_min), student_steps))
    z = calibrate_record_noise(f.dp_epsilon, f.dp_delta, f.dp_count_std, steps)
    plan = RecordPlan(f.dp_clip, f.dp_epsilon, f.dp_delta, f.dp_count_std, z, dict(counts),
                      t_batch, s_batch, teacher_steps, student_steps)
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
    """Updates weighted by the released counts, without BN statistics (source-only BN); the
    mean w's noised coordinate (wire.TARGET_W, expected cross KD) is kept and weighted alike."""
    return [ClientUpdate(u.client, plan.counts.get(u.client, 1),
                         {**{k: u.arrays[k] for k in wire.W_UPDATE_KEYS if k in u.arrays},
                          wire.STUDENT_BN: {}},
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
