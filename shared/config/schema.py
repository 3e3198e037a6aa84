"""Typed run configuration: the dataclasses every run, round and node reads.

loader.py fills them strictly from YAML and `--set a.b=v` overrides. Below the entry point
nothing reads a dict: code receives these dataclasses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from shared.unikd.devices import DeviceName
from shared.unikd.settings import DannTargetTerms, KDHparams

if TYPE_CHECKING:
    from shared.data.datasets import DatasetSpec



def rng(lo: float | None = None, hi: float | None = None, **kw: Any) -> dict[str, Any]:
    """Field metadata: inclusive numeric bounds."""
    return {"range": (lo, hi), **kw}


PATH = {"path": True}  # field metadata: an input path, resolved against the config file's folder

METHODS = ("unikd", "source-only", "kd-target", "dann-student", "mobileda", "aad", "jku")


@dataclass
class DataConfig:
    dataset: str = "SYNTH"  # HAR, HHAR, FD, SSC, SYNTH or GENERIC (shape read from the files)
    # AdaTime folder; "" = the embedded synthetic data (generated on first use). Relative to the
    # config file's folder when set in a file, to the working directory when set with --set.
    path: str = field(default="", metadata=PATH)
    scenario: str = "0->1"  # source->target; per-domain federations: 2->11+13+16 (one per edge)
    normalize: bool = True  # per-channel z-score with source-train statistics
    synth_shift: float = field(default=1.0, metadata=rng(0.0, 3.0))  # synthetic domain-gap strength


@dataclass
class TeacherTraining:
    """How the DANN teacher trains and its source weight: the first keys of `teacher` (a base
    of its own so they stay first in `unikd config show`, before `DannTargetTerms`' keys)."""

    epochs: int = field(default=40, metadata=rng(1, 10_000))
    lr: float = field(default=1e-3, metadata=rng(0.0, 1.0))
    weight_decay: float = field(default=1e-4, metadata=rng(0.0, 1.0))
    batch_size: int = field(default=0, metadata=rng(0, 65_536))  # 0 = the dataset's (batch_for)
    w_cls: float = field(default=1.0, metadata=rng(0.0, None))


@dataclass
class TeacherConfig(DannTargetTerms, TeacherTraining):
    """DANN teacher pre-training (spec §3.2). Its keys: `TeacherTraining`'s, then the target
    terms' weights (`DannTargetTerms`: w_dom, w_ent), then these."""

    # DANN seeds averaged into one teacher: three are stronger than one on both development
    # sets (issue 25, BENCHMARKS.md "One default for every dataset"), chosen without labels
    ensemble: int = field(default=3, metadata=rng(1, 16))
    checkpoint: str = field(default="", metadata=PATH)  # reuse a trained teacher instead

    def batch_for(self, spec: DatasetSpec) -> int:
        """The batch size to train with: the value set here, or the dataset's when 0."""
        return self.batch_size or spec.batch_size


@dataclass
class StudentTraining:
    """How long the student trains and with which optimizer: the first keys of `distill` (a
    base of its own so they stay first in `unikd config show` and a dumped config.yaml)."""

    method: Literal[METHODS] = "unikd"  # what `unikd distill` trains unless --method is given
    epochs: int = field(default=30, metadata=rng(1, 10_000))
    # 0 (the default) = the dataset's batch size (DatasetSpec.batch_size: 32, SSC 128); any value
    # set in the file or with --set wins, so a user's choice is never overridden
    batch_size: int = field(default=0, metadata=rng(0, 65_536))
    lr: float = field(default=1e-2, metadata=rng(0.0, 1.0))
    weight_decay: float = field(default=1e-4, metadata=rng(0.0, 1.0))
    beta1: float = field(default=0.5, metadata=rng(0.0, 0.999999))
    beta2: float = field(default=0.99, metadata=rng(0.0, 0.999999))


@dataclass
class DistillConfig(KDHparams, StudentTraining):
    """Student distillation (spec §3.3, §4). Each reference-code fix is its own switch (spec §8).

    The defaults are the one recommendation for every dataset (issue 25): the official code's
    loss behaviour (every §8.1-8.7 fix off, its second target pass) with its cross-domain KD in
    expectation, which beat the fixes-on settings on both development sets (HAR dev pairs
    90.50 against 89.11; HHAR_SA pairs 78.66 against 72.24, 3 seeds; BENCHMARKS.md).

    Its keys, in order: `StudentTraining`'s, then the KD loss settings, which are `KDHparams`
    (shared/unikd/settings.py, declared once there: every round carries them and the engine
    reads them), then the fields below.
    """

    # `reference_compat: true` pins every fix of spec §8 off (items 1-7, REFERENCE_SWITCHES) and
    # refuses a config that turns one on: the official code's behaviour, guaranteed
    reference_compat: bool = False
    beta_natural_log: bool = False  # §8.3 fix when true: beta rises 0.1 -> 0.9
    grl_ramp: bool = False  # §8.7 fix when true: GRL alpha ramps from 0 over progress in [0, 1]
    cache_teacher: bool = True  # frozen teacher run once per window, not every step
    # What a run reports and delivers (issue 25): 0 = the live student; in (0, 1) an exponential
    # moving average of the student's and adapter's weights and BN statistics with this decay
    # per step of the run's clock (centralized: each step; federated: each step an applied
    # round advances, so one per round in edge mode whatever fed.local_steps, L per round in
    # both mode), kept by whoever holds the master weights (shared/unikd/ema.py). Training
    # itself always continues on the live weights. 0.955 (a horizon of ~22 steps, 2-3 epochs
    # on the dev pairs) was chosen on both development sets: the best mean of the last 5
    # evaluations on both, their spread 1.95 -> 0.46 MF1 std (HAR dev, seed 0), 2.76 -> 1.22
    # (HHAR_SA dev, 3 seeds, final MF1 78.66 -> 79.50); longer horizons lag (BENCHMARKS.md).
    ema_decay: float = field(default=0.955, metadata=rng(0.0, 0.999999))

    def batch_for(self, spec: DatasetSpec) -> int:
        """The batch size to train with: the value set here, or the dataset's when 0."""
        return self.batch_size or spec.batch_size


@dataclass
class FedConfig:
    # the simulated population (in-process engine: up to a million lazily held clients); a
    # deployment's expected number of nodes (fed.min_available: how many a round needs)
    clients: int = field(default=3, metadata=rng(1, 1_000_000))
    rounds: int = field(default=0, metadata=rng(0, 1_000_000))  # 0 = distill.epochs worth of steps
    # the default stays 1 (issue 26): 10 per exchange on both sides scored 4+ MF1 lower on the
    # HAR development pairs (BENCHMARKS.md, "Fewer exchanges")
    local_steps: int = field(default=1, metadata=rng(1, 10_000))
    # what a round is (shared/clock/local_steps.py): "edge" = one step of the clock per round,
    # its target half over L local steps on each edge; "both" = L steps of the clock per round,
    # L source steps on the cloud and L target steps on each edge: L times fewer rounds. With
    # "both", fed.rounds counts rounds of L steps and fed.checkpoint_every counts steps. The
    # default "both" (issue 26): at L=1 the same round as "edge", bit for bit, but the federated
    # teacher's ensemble members share each exchange (teacher.ensemble times fewer)
    local_steps_mode: Literal["edge", "both"] = "both"
    # "both" only: how the cloud applies a round's combined pseudo-gradient to advance L steps
    # (server/fed/server_step.py): "repeat" = L Adam steps on it, "scaled-lr" = one Adam step
    # with the learning rate x L, "sqrt-lr" = L Adam steps with the learning rate / sqrt(L)
    server_step: Literal["repeat", "scaled-lr", "sqrt-lr"] = "sqrt-lr"
    # "both" only: how each side's local path moves between its L steps
    # (shared/clock/local_steps.py PathMover): "plain" = SGD at distill.lr on its own half's
    # gradient (barely moves); "preconditioned" = along its own half plus the other side's latest
    # pseudo-gradient, scaled by the cloud's Adam second moments (sent down with each round)
    local_path: Literal["plain", "preconditioned"] = "preconditioned"
    # "both" only: the federated DANN teacher's own local steps per exchange (its own clock,
    # teacher.epochs x its steps per epoch); 0 (the default) = half of fed.local_steps, rounded
    # up (10 -> 5, 1 -> 1): at the student's 10 the teacher undertrains with sqrt-lr and
    # diverges with repeat (BENCHMARKS.md, "Fewer exchanges", issue 26)
    teacher_local_steps: int = field(default=0, metadata=rng(0, 10_000))
    # "both" only: how the teacher's server applies its rounds (as fed.server_step); "same" =
    # fed.server_step
    teacher_server_step: Literal["same", "repeat", "scaled-lr", "sqrt-lr"] = "same"
    partition: str = "iid"  # iid | dirichlet:<alpha> | per-domain
    teacher_placement: Literal["edge", "cloud", "source-only"] = "edge"
    # cloud placement only: "prototypes" sends the teacher's mean source feature per class
    # (C x 128 floats) so each edge keeps a feature hint without the teacher (issue 15)
    cloud_hint: Literal["off", "prototypes"] = "off"
    bn_policy: Literal["averaged", "local", "reestimate"] = "averaged"
    engine: Literal["inprocess", "ray"] = "inprocess"
    # in-process engine: processes that run the simulated clients' ClientApps at once, each
    # owning a fixed share of the nodes and their contexts (server/fed/worker_grid.py), the
    # cloud's own process one of them; the results are bit-identical whatever the count.
    # 0 = min(fed.clients, CPU cores + 1: the cloud's process also runs the cloud's own steps
    # between exchanges); 1 = every client in the cloud's process, one after
    # another. Not part of the config's hash (an execution setting: a resume may change it)
    workers: int = field(default=0, metadata=rng(0, 1024))
    min_clients: int = field(default=1, metadata=rng(1, 10_000))
    checkpoint_every: int = field(default=0, metadata=rng(0, 1_000_000))  # steps; 0 = each epoch
    # federated evaluation after each epoch of steps (and after the last round):
    # "piggyback" = the evaluation of the weights a round sends rides on that round's replies
    # (no exchange of its own; the last one, after the final round, is one), where a round can
    # carry it: not under secure aggregation (its replies carry masked sums) nor with
    # distill.ema_decay > 0 (the evaluated EMA weights are not the trained ones), where every
    # evaluation stays an exchange; "exchange" = every evaluation its own exchange
    evaluation: Literal["piggyback", "exchange"] = "piggyback"
    # a label-free stopping rule for the UNI-KD rounds (server/fed/stopping.py): "plateau" stops
    # once the cloud's source CE and the clients' mean D_d confusion weight w have each changed
    # by at most stop_tolerance (relative) per epoch for stop_patience epochs in a row, never
    # before stop_min_fraction of the epochs; "off" runs the whole schedule
    stop: Literal["off", "plateau"] = "off"
    stop_patience: int = field(default=3, metadata=rng(1, 10_000))
    stop_tolerance: float = field(default=0.05, metadata=rng(0.0, 10.0))
    stop_min_fraction: float = field(default=0.5, metadata=rng(0.0, 1.0))
    round_timeout: float = field(default=600.0, metadata=rng(1.0, 86_400.0))  # seconds
    # the round loop's transport (server/fed/transport.py): seconds between reply pulls, and
    # one packed array per message instead of one Flower object per array
    poll_interval: float = field(default=0.05, metadata=rng(0.001, 60.0))
    pack: bool = True
    # client-level differential privacy (server/fed/dp/): the whole update of a client
    # (student, D_f and D_d gradients together) is clipped to dp_clip and Gaussian noise is added
    # by the cloud to the mean (central) or by each client to its own update (local)
    # `record`: per-window DP-SGD on every edge (client/node/record_dp.py): dp_clip bounds one
    # window's gradient, dp_epsilon/dp_delta cover one window over the teacher and student rounds
    dp: Literal["off", "central", "local", "record"] = "off"
    dp_clip: float = field(default=1.0, metadata=rng(1e-6, 1e6))  # L2 bound C of one update
    dp_epsilon: float = field(default=8.0, metadata=rng(1e-3, 1e6))  # target over the rounds
    dp_delta: float = field(default=1e-5, metadata=rng(1e-12, 0.1))
    # --- record-level DP and secure aggregation (issue 13) ---
    dp_count_std: float = field(default=20.0, metadata=rng(0.0, 1e6))  # noise on a node's count
    secure_aggregation: bool = False  # the cloud learns only each round's sum (server/fed/secagg.py)
    secagg_threshold: float = field(default=0.6, metadata=rng(0.0, 1.0))  # fraction for unmasking
    secagg_clip: float = field(default=8.0, metadata=rng(1e-6, 1e6))  # L2 bound before masking
    secagg_bits: int = field(default=24, metadata=rng(8, 48))  # quantisation levels (2^bits)
    # DP clipping: "joint" bounds the whole vector by dp_clip (record DP: one window's gradient;
    # central, local: one client's update); "per-network" bounds each network's part (student
    # with adapter, D_f, D_d; teacher, its discriminator) by dp_clip / sqrt(networks), the same
    # total bound, so no network crowds out the others
    dp_clip_scope: Literal["joint", "per-network"] = "joint"
    # record DP's noise under secure aggregation: "node" = each node adds the full N(0, (zC)^2)
    # to its own update; "shares" = each adds 1/t of the variance at the mask stage, so only the
    # sum the cloud unmasks carries the full noise (needs secure_aggregation and local_steps 1)
    record_noise: Literal["node", "shares"] = "node"
    # distill.cross_kd=expected under fed.dp or secure aggregation: the clients' mean confusion
    # weight w rides as one more coordinate of the update that is clipped, noised and summed
    # privately. This is the share of the squared L2 bound C^2 it takes: the coordinate is
    # sqrt(w_share)*C*w (w in [0, 1]) and the gradient part is clipped to sqrt(1-w_share)*C, so
    # the whole vector stays within C, the bound the accountant assumes (docs/privacy.md)
    w_share: float = field(default=0.1, metadata=rng(0.001, 0.999))
    # faults, simulated and seeded by (seed, round, node) in the in-process Grid only
    dropout: float = field(default=0.0, metadata=rng(0.0, 1.0))  # nodes offline per round
    straggler_fraction: float = field(default=0.0, metadata=rng(0.0, 1.0))  # late: dropped
    corrupt_fraction: float = field(default=0.0, metadata=rng(0.0, 1.0))  # replies corrupted
    aggregator: str = "mean"  # mean | trimmed-mean:<fraction> | norm-bounded:<x median>
    # --- cross-device federations (issue 27, server/fed/cohort.py) ---
    # clients per UNI-KD round, a seeded sample of the nodes available at that round; 0 = every
    # node, fixed before round 1 (the cross-silo behaviour)
    clients_per_round: int = field(default=0, metadata=rng(0, 1_000_000))
    # how the cohort is drawn: "fixed" = exactly clients_per_round of the available nodes;
    # "poisson" = each available node independently with probability clients_per_round /
    # fed.clients (DP-FedAvg's sampling, which client-level DP accounts: server/fed/dp/)
    cohort_sampling: Literal["fixed", "poisson"] = "fixed"
    # how many nodes must be available for round 1 to start and for any round to run (below it
    # the round is skipped); 0 = fed.clients before round 1 and a fixed node list (cross-silo).
    # Set it, or clients_per_round, and nodes that connect later join the next rounds' cohorts
    min_available: int = field(default=0, metadata=rng(0, 1_000_000))
    # federated evaluation on a seeded sample of this many nodes; 0 = every node
    eval_clients: int = field(default=0, metadata=rng(0, 1_000_000))
    # evaluate every this many steps of the clock; 0 = each epoch (the last round always is)
    eval_every: int = field(default=0, metadata=rng(0, 1_000_000))
    # simulated availability (in-process engine only): each client is online at a round with
    # this probability, drawn per (seed, client, round); with availability_period > 0 the
    # probability swings by +-availability_swing (relative) over that many rounds, each client
    # with its own seeded phase (a diurnal cycle across time zones)
    availability: float = field(default=1.0, metadata=rng(0.0, 1.0))
    availability_period: int = field(default=0, metadata=rng(0, 1_000_000))
    availability_swing: float = field(default=0.5, metadata=rng(0.0, 1.0))

    @property
    def teacher_steps(self) -> int:
        """Local steps per exchange of the federated DANN teacher (both mode): its own, or half
        the student's, rounded up."""
        return self.teacher_local_steps or (self.local_steps + 1) // 2

    @property
    def teacher_step_rule(self) -> str:
        """The teacher's server step (both mode): its own, or the student's."""
        return self.server_step if self.teacher_server_step == "same" else self.teacher_server_step


@dataclass
class RunConfig:
    seed: int = field(default=0, metadata=rng(0, 2**31 - 1))
    out: str = "runs"  # parent folder of run folders
    threads: int = field(default=1, metadata=rng(1, 256))  # torch threads; 1 keeps runs bit-stable
    # where the cloud's and the simulated clients' tensors are computed (shared/unikd/compute.py):
    # "auto" = cuda where torch sees a CUDA device, else cpu; "cuda" without one is an error
    # before anything trains. Not in the config hash (HASH_EXEMPT): it says where the same
    # experiment computes, so a CPU run may resume on a GPU and cached teachers stay valid; a GPU
    # run's floats are its own (not bit-identical to the CPU's), and results.json records the
    # device each run resolved. A deployed edge picks its own (`unikd edge --device`): the cloud
    # never chooses a device's hardware
    device: DeviceName = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    fed: FedConfig = field(default_factory=FedConfig)

    def resolved(self) -> RunConfig:
        """Apply presets: `reference_compat` forces the official code's behaviour (spec §8.1-8.7)."""
        if self.distill.reference_compat:
            for name, value in REFERENCE_SWITCHES.items():
                setattr(self.distill, name, value)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """What the results depend on: every key but the execution-only ones (HASH_EXEMPT)."""
        d = self.to_dict()
        for section, key in HASH_EXEMPT:
            (d[section] if section else d).pop(key, None)
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# Keys that say how or where a run executes, not what it computes (a resume may change them);
# section "" is the top level.
HASH_EXEMPT = (("fed", "workers"), ("", "device"))

# What `distill.reference_compat: true` sets: the official code's behaviour (spec §8.1-8.7, §8.14).
REFERENCE_SWITCHES = {"target_kd": False, "adv_to_student": False, "beta_natural_log": False,
                      "detach_weights": False, "grl_ramp": False, "double_target_forward": True}
