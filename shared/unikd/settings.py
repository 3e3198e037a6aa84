"""The method's settings, declared once: the KD loss switches and one step's schedule values.

`KDHparams` is the single declaration of every KD switch: `DistillConfig` (the `distill:`
section of a run config) inherits its fields, so each is a YAML key with the default and range
given here; `RoundConfig` nests it and flattens it into the round's `config` record; the engine,
centralized or on either side of a federated round, reads it. Adding a switch is one field here
(plus its test): the config, the wire and both trainers pick it up.

No torch here: the config layer imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from shared.clock.schedules import grl_alpha, kd_beta, training_progress


@dataclass
class KDHparams:
    """UNI-KD's loss settings (spec §3.3); each fix of spec §8 is its own switch.

    Not frozen: `DistillConfig` inherits these fields and `reference_compat` sets some of them.
    A field's `range` metadata is the inclusive bound the config loader checks.
    """

    temperature: float = field(default=4.0, metadata={"range": (1e-3, 100.0)})
    lam_ce: float = field(default=1.0, metadata={"range": (0.0, None)})
    lam_dom: float = field(default=1.0, metadata={"range": (0.0, None)})
    # Defaults: the official code's behaviour (the §8 fixes off) with its cross KD in
    # expectation, the one recommendation for every dataset (issue 25, config/schema.py).
    target_kd: bool = False  # §8.1 fix when true: KD on the *target* logits of both networks
    # With target_kd false, how the reference's cross-domain KD pairs samples: "paired" is the
    # official code (source window i with target window i of two shuffled batches; centralized
    # only), "expected" its expectation over that random pairing, mean_t(w) * KD_source, which
    # the federation can split exactly (engine.py `cross_kd`).
    cross_kd: Literal["paired", "expected"] = "expected"
    adv_to_student: bool = False  # §8.2: adversarial feature loss reaches student and adapter
    # §8.6: w = 1-|p0-p1| as a constant sample weight. Off by default: letting the KD reach D_d
    # through w measured better on HAR (BENCHMARKS.md), and the federation can split it exactly.
    detach_weights: bool = False
    double_target_forward: bool = True  # §8.14: the reference's second student pass on target
    # Label-free target-only terms (issue 25, engine.py `target_terms`); each is off at 0. They
    # are weighted by beta like the KD (see `target_terms`), so these are their weights at beta=1.
    # SHOT-IM on the student's target predictions: mean entropy down, batch-mean entropy up.
    # It couples the windows of a batch, so record-level DP (per-window clipping) refuses it.
    im_weight: float = field(default=0.0, metadata={"range": (0.0, None)})
    # Confident pseudo-labels (FixMatch-style): CE of the student on a strong augmentation of
    # each target window towards the teacher's arg-max class on the plain window, kept where the
    # teacher's probability is at least pl_threshold (the student's own where the teacher stays
    # in the cloud).
    pl_weight: float = field(default=0.0, metadata={"range": (0.0, None)})
    pl_threshold: float = field(default=0.95, metadata={"range": (0.0, 1.0)})

    @classmethod
    def from_config(cls, d: object) -> KDHparams:
        """The KD settings of a `DistillConfig` (or any object with these attributes)."""
        return cls(**{f.name: getattr(d, f.name) for f in fields(cls)})


@dataclass
class DannTargetTerms:
    """The target half of the DANN teacher's objective (spec §3.2): the only part a node
    computes in a federated teacher round. Declared once like `KDHparams`: `TeacherConfig`
    inherits these fields (YAML keys under `teacher:`), `TeacherRoundConfig` nests them (flat
    keys on the wire), and `engine.dann_target_terms` reads them on either side."""

    w_dom: float = field(default=1.0, metadata={"range": (0.0, None)})  # target domain loss
    # Conditional entropy of the teacher's target predictions (VADA's target term, Shu et al.
    # 2018): pushes the decision boundary away from dense target regions. Per window, so
    # record-level DP can clip it. 0 = plain DANN.
    w_ent: float = field(default=0.0, metadata={"range": (0.0, None)})

    @classmethod
    def from_config(cls, d: object) -> DannTargetTerms:
        """These weights of a `TeacherConfig` (or any object with these attributes)."""
        return cls(**{f.name: getattr(d, f.name) for f in fields(cls)})


# Switches of target terms whose value on one window depends on the other windows of its batch.
BATCH_COUPLED = ("im_weight",)  # SHOT-IM's diversity term: the entropy of the batch-mean prediction


def batch_coupling(hp: KDHparams) -> str | None:
    """Why per-window DP-SGD cannot run these settings (None: it can). Its clipping bounds each
    window's gradient only if the target loss is a sum of per-window parts; both the cloud (at
    start) and a node (each round) refuse with this text, which names the switch."""
    on = [f"distill.{n}={getattr(hp, n)}" for n in BATCH_COUPLED if getattr(hp, n) > 0]
    if not on:
        return None
    return (f"{', '.join(on)}: this target term couples the windows of a batch (information "
            f"maximisation's diversity term is the entropy of the batch-mean prediction), so "
            f"per-window DP-SGD (fed.dp=record) cannot bound one window's influence; set it to 0 "
            f"under record DP")


@dataclass(frozen=True)
class StepSchedule:
    """Values the clock gives one step; in a federation the server sends them to every client."""

    beta: float  # KD weight; the domain loss gets (1 - beta)
    alpha: float  # GRL coefficient

    @classmethod
    def at(cls, distill, epoch: int, step: int, steps_per_epoch: int) -> StepSchedule:
        """β and the GRL α at (1-based epoch, 0-based step) under a DistillConfig."""
        return cls(beta=kd_beta(epoch, distill.epochs, distill.beta_natural_log),
                   alpha=grl_alpha(training_progress(step, epoch, steps_per_epoch,
                                                     distill.epochs, distill.grl_ramp)))
