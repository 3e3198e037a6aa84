"""How a federation runs under DP: the checks before it starts, its plan, and per round the
records a reply must carry, what the cloud applies and what every node is charged.

`plan_run_privacy` turns the config into a `RunPrivacy` (None when `fed.dp: off`): the plan of
either kind (client_level.py, record_level.py), record DP's epsilon ledger and the key of the
central noise. The round loop (server/fed/rounds.py) asks it, and nothing else, about DP.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from server.fed.aggregate import ClientUpdate
from server.fed.dp.client_level import PrivacyPlan, plan_privacy, private_aggregate, releases
from server.fed.dp.record_level import (RecordLedger, RecordPlan, plan_record_privacy,
                                        record_aggregate)
from shared.clock.local_steps import TEACHER_ROUND, LocalSteps, RoundPlan, teacher_dp_steps
from shared.clock.steps import steps_per_epoch
from shared.config import RunConfig
from shared.errors import UnikdError
from shared.unikd.settings import batch_coupling
from shared.protocol import wire

log = logging.getLogger(__name__)

DpPlan = PrivacyPlan | RecordPlan  # both tell the nodes mode, clip, noise_multiplier, count_std
TRAIN_RECORDS = (*wire.GRAD_KEYS, wire.STUDENT_BN)  # a train reply without record DP
DISTRIBUTED = "distributed (node shares)"  # the dp_noise column where the nodes added it


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


def check_clip_scope(cfg: RunConfig) -> None:
    """`dp_clip_scope` shapes a DP mechanism's clipping: without one it does nothing, and the
    log says so rather than ignoring it silently. A warning, not an error: a private config
    run with fed.dp=off as its own baseline is a common, meaningful comparison."""
    if cfg.fed.dp_clip_scope != "joint" and cfg.fed.dp == "off":
        log.warning("fed.dp_clip_scope=%s has no effect: it shapes a DP mechanism's clipping "
                    "and fed.dp=off runs none", cfg.fed.dp_clip_scope)


def check_record_terms(cfg: RunConfig) -> None:
    """Record DP clips each window's gradient: a target term that couples the windows of a
    batch is refused before any round, with the switch named (the nodes refuse it too)."""
    refusal = batch_coupling(cfg.distill) if cfg.fed.dp == "record" else None
    if refusal:
        raise UnikdError(refusal)


def teacher_round_charges(cfg: RunConfig, n_src: int, n_trg: int, spec) -> list[int]:
    """The DP-SGD steps each DANN teacher round the edges will train charges every node, in
    round order (none with a checkpoint or a source-only teacher): edge mode one per round,
    member after member; both mode every member's local steps in each round."""
    if cfg.teacher.checkpoint or cfg.fed.teacher_placement == "source-only":
        return []
    t = cfg.teacher
    steps = steps_per_epoch(n_src, n_trg, t.batch_for(spec)) * t.epochs
    if cfg.fed.local_steps_mode == "edge":
        return [TEACHER_ROUND.dp_steps()] * (steps * t.ensemble)
    plan = RoundPlan.of("both", cfg.fed.teacher_steps, steps)
    return [teacher_dp_steps(t.ensemble, plan.local_steps(r).count)
            for r in range(1, plan.rounds + 1)]


@dataclass(frozen=True)
class RunPrivacy:
    """A run's DP on the cloud: the plan every round follows, record DP's epsilon ledger, the
    key of the central noise, and whether the nodes' updates arrive securely aggregated."""

    plan: DpPlan
    ledger: RecordLedger | None = None  # record DP only: epsilon per client per round
    secret: bytes | None = None  # key of the central noise (cloud_secret); None: seed only
    secure: bool = False  # fed.secure_aggregation: the cloud sees the survivors' sum only
    shares: bool = False  # record DP whose nodes add 1/t noise shares (fed.record_noise=shares)
    w_share: float = 0.1  # fed.w_share: the mean w's share of C^2 (expected cross KD)

    @property
    def reply_records(self) -> tuple[str, ...]:
        """Records a train reply must carry: record DP sends no BN statistics at all."""
        return wire.GRAD_KEYS if isinstance(self.plan, RecordPlan) else TRAIN_RECORDS

    def charge_round(self, rnd: int, clients: Iterable[int], local_steps: int) -> None:
        """Record DP: every node asked to train this round spent its DP-SGD steps, one per
        local step (an upper bound: its reply may have been lost)."""
        if self.ledger is not None:
            self.ledger.charge("unikd", rnd, sorted(clients), LocalSteps(local_steps).dp_steps())

    def replay(self, teacher_charges: list[int], student_rounds: int, plan: RoundPlan) -> None:
        """A resumed run's ledger: the teacher phase (`teacher_round_charges`) and the UNI-KD
        rounds before the checkpoint, each with its local steps (`plan`)."""
        if self.ledger is None:
            return
        clients = sorted(self.ledger.plan.counts)
        for r, steps in enumerate(teacher_charges, start=1):
            self.ledger.charge("teacher", r, clients, steps)
        for r in range(1, student_rounds + 1):
            self.charge_round(r, clients, plan.local_steps(r).count)

    def aggregate(self, updates: list[ClientUpdate], seed: int, rnd: int, applied_before: int
                  ) -> tuple[list[ClientUpdate], dict]:
        """What the cloud applies this round, plus the round's DP columns.

        Securely aggregated under `central`, `updates` is the survivors' mean that the nodes
        clipped and noised with their shares themselves (distributed DP): the cloud adds nothing.
        """
        plan = self.plan
        if isinstance(plan, RecordPlan):
            row = {"dp_epsilon": self.ledger.max_spent() if self.ledger else None,
                   "dp_noise_multiplier": plan.noise_multiplier}
            if self.secure and self.shares:
                row["dp_noise"] = DISTRIBUTED
            return record_aggregate(updates, plan), row
        if self.secure and plan.mode == "central":
            return updates, {"dp_epsilon": plan.spent(releases(plan, rnd, applied_before)),
                             "dp_noise_multiplier": plan.noise_multiplier,
                             "dp_noise": DISTRIBUTED}
        with_w = bool(updates) and wire.TARGET_W in updates[0].arrays
        agg, row = private_aggregate(updates, plan, seed, rnd, self.secret,
                                     self.w_share if with_w else None)
        row["dp_epsilon"] = plan.spent(releases(plan, rnd, applied_before))
        row["dp_noise_multiplier"] = plan.noise_multiplier
        return [agg], row


def train_records(privacy: RunPrivacy | None) -> tuple[str, ...]:
    """Records a train reply must carry this run."""
    return privacy.reply_records if privacy is not None else TRAIN_RECORDS


def plan_run_privacy(cfg: RunConfig, rounds: RoundPlan, counts: dict[int, int], n_src: int,
                     spec, secret: bytes | None) -> RunPrivacy | None:
    """The run's DP (None when fed.dp=off); `rounds` the run's rounds and their local steps,
    `secret` keys the central noise (`cloud_secret`). Client-level DP releases one update per
    round; record DP charges one DP-SGD step per local step of every round."""
    f = cfg.fed
    if f.dp == "off":
        return None
    if f.dp != "record":
        return RunPrivacy(plan_privacy(cfg, rounds.rounds), secret=secret,
                          secure=f.secure_aggregation, w_share=f.w_share)
    teacher = sum(teacher_round_charges(cfg, n_src, sum(counts.values()), spec))
    plan = plan_record_privacy(cfg, counts, teacher, rounds.dp_steps(), spec)
    return RunPrivacy(plan, RecordLedger(plan), secret, f.secure_aggregation,
                      f.record_noise == "shares", f.w_share)
