"""Converting between torch objects and Flower records, and the typed round config."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from torch import nn

from shared.data.datasets import DatasetSpec
from shared.unikd.engine import UniKDNets
from shared.clock.schedules import ScheduleClock
from shared.unikd.settings import DannTargetTerms, KDHparams, StepSchedule
from shared.protocol import npy


def to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    """Arrays copied out of the live tensors (so later in-place updates do not leak in)."""
    return ArrayRecord({k: npy.to_array(v.detach().cpu().numpy()) for k, v in tensors.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(npy.from_array(a), copy=True))
            for k, a in record.items()}


def student_state(nets: UniKDNets) -> dict[str, torch.Tensor]:
    """Student and adapter as one state dict: parameters plus BN buffers."""
    return {**{f"student.{k}": v for k, v in nets.student.state_dict().items()},
            **{f"adapter.{k}": v for k, v in nets.adapter.state_dict().items()}}


def load_student_state(nets: UniKDNets, state: dict[str, torch.Tensor]) -> None:
    split: dict[str, dict[str, torch.Tensor]] = {"student": {}, "adapter": {}}
    for k, v in state.items():
        head, rest = k.split(".", 1)
        split[head][rest] = v
    nets.student.load_state_dict(split["student"])
    nets.adapter.load_state_dict(split["adapter"])


def student_params(nets: UniKDNets) -> dict[str, nn.Parameter]:
    return {**{f"student.{k}": p for k, p in nets.student.named_parameters()},
            **{f"adapter.{k}": p for k, p in nets.adapter.named_parameters()}}


def bn_buffers(module: nn.Module, prefix: str = "student.") -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in module.named_buffers()}


def param_name(group: str, name: str) -> str:
    """A parameter's name in `UniKDNets.named_parameters()` from its optimizer group and wire
    name (`group_named_params`): the student group's wire names are already full."""
    return name if group == "student" else f"{group}.{name}"


def group_named_params(nets: UniKDNets) -> dict[str, dict[str, nn.Parameter]]:
    """Parameters by optimizer group, with the names used on the wire."""
    return {"student": student_params(nets), "d_f": dict(nets.d_f.named_parameters()),
            "d_d": dict(nets.d_d.named_parameters())}


@dataclass(kw_only=True)
class SetupConfig:
    """The `config` record of a count query or a delivery, and the part every round shares.

    Every message a node answers carries one: the round, the seed and dataset its windows come
    from, how it keeps BN statistics, the training step it belongs to and the record-level
    privacy it applies. A federated teacher round adds its own settings (`TeacherRoundConfig`),
    a UNI-KD round its schedule and KD settings (`RoundConfig`). Where the node's data comes
    from is not here: that is `SimSetup` (simulation only) or the device's own node config.
    """

    round: int
    seed: int
    dataset: str  # the node reads its own files by this name; the models' shape is in `spec`
    bn_policy: str = "averaged"  # averaged | local | reestimate (fed.bn_policy)
    # the training step: a count query and a delivery train nothing and leave these as they are
    epoch: int = 1
    step: int = 0
    global_step: int = 0
    batch_size: int = 0
    local_steps: int = 1
    # privacy: client-level DP (central | local: the node noises) or per-window DP (record)
    dp_mode: str = "off"  # off | central | local | record
    dp_clip: float = 0.0
    dp_noise: float = 0.0  # noise multiplier z
    dp_count_std: float = 0.0  # record DP: std of the noise on the node's released window count
    dp_clip_scope: str = "joint"  # record DP: "joint" or "per-network" clipping (dp_sgd.py)
    dp_shares: bool = False  # record DP + SecAgg: the noise is added as 1/t shares at the mask stage

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(flat_fields(self))

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Self:
        return _from_config_record(cls, record)


@dataclass(kw_only=True)
class TeacherRoundConfig(SetupConfig):
    """A round of federated DANN pre-training (`train.teacher`): the GRL coefficient and the
    weights of the target terms, the only part of the teacher's objective the node computes
    (flat keys `w_dom`, `w_ent` on the wire)."""

    alpha: float
    terms: DannTargetTerms
    # fed.local_steps_mode=both: one exchange trains every ensemble member, L local steps each
    # (shared/clock/local_steps.py). `members` of them (arrays "<member>.<name>"; `seed` is the
    # run's seed, member k's is seeding.member_seed(seed, k)), each local step with its own GRL
    # α from `clock`, plain SGD at `lr` between steps. None (not on the wire) in edge mode: one
    # member per exchange, `seed` its own, one step at `alpha`
    members: int | None = None
    lr: float | None = None
    clock: ScheduleClock | None = None


@dataclass(kw_only=True)
class RoundConfig(SetupConfig):
    """The training schedule and settings of one UNI-KD round: the cloud computes it, nodes obey it.

    The schedule values and the KD settings are nested, each of one type the engine reads, and
    travel flat: `to_record` writes their fields as keys of their own.
    """

    schedule: StepSchedule
    hparams: KDHparams
    lr: float
    teacher_hash: str = ""  # "" when the teacher stays in the cloud
    teacher_members: int = 0  # members in the `teacher` snapshot, when one is attached
    source_kd: float = 0.0  # "expected" cross KD: the cloud's T^2 mean source KL this round
    secagg: bool = False  # secure aggregation: the train reply carries public keys only
    secagg_clip: float = 0.0  # L2 bound the node clips its update to before masking
    secagg_bits: int = 24  # fixed-point bits per clip unit in Z_{2^64}
    # the expected cross KD under DP or secure aggregation: the share of the squared L2 bound the
    # node's mean w takes as one more coordinate of its private update (fed.w_share, record
    # wire.TARGET_W); None (not on the wire): the cloud reads the metric w_mean, no coordinate
    w_share: float | None = None
    # no node reads it (the message type says what a message is); it stays on the wire so a
    # round's bytes, which the communication ledger counts, stay as measured
    phase: str = "unikd"
    # fed.local_steps_mode=both: the clock and schedule switches, from which the node computes
    # each local step's own schedule values (shared/clock/local_steps.py); None (not on the
    # wire) in edge mode, whose local steps all take `schedule`
    clock: ScheduleClock | None = None
    # fed.evaluation=piggyback: True on the round after an evaluation point; the node scores
    # the weights it received on its labelled test windows before it trains and adds the
    # confusion counts to its reply, so the evaluation costs no exchange of its own. None (not
    # on the wire) on every other round
    evaluate: bool | None = None


def flat_fields(config: object) -> dict:
    """A config dataclass as one flat mapping (a ConfigRecord holds scalars only): the fields
    of a nested dataclass become keys of their own, an optional one left at None travels not
    at all. Two fields of one name are an error."""
    out: dict = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None and f.default is None:
            continue
        for key, v in (flat_fields(value) if dataclasses.is_dataclass(value)
                       else {f.name: value}).items():
            if key in out:
                raise ValueError(f"{type(config).__name__}: two fields named {key!r}")
            out[key] = v
    return out


def spec_to_record(spec: DatasetSpec) -> ConfigRecord:
    """The `spec` record: everything a node needs to build the models for this dataset."""
    return ConfigRecord(spec.to_dict())


def spec_from_record(record: ConfigRecord) -> DatasetSpec:
    return DatasetSpec.from_dict(dict(record), "the round's 'spec' record")


@dataclass
class SimSetup:
    """How a *simulated* node finds its share of the target domain (the `sim` record).

    A deployed node ignores it: its windows come from its own `data-path` or `store-path`.
    """

    data_path: str
    synth_shift: float
    target: str
    partition: str
    num_clients: int
    # The run's seed: it decides which windows each node holds. Not RoundConfig.seed, which
    # during federated DANN pre-training is the teacher member's seed: a node's windows are
    # fixed for the whole run, as on a device.
    seed: int

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(dataclasses.asdict(self))

    @classmethod
    def from_record(cls, record: ConfigRecord) -> SimSetup:
        return _from_config_record(cls, record)


def _from_config_record(cls, record: ConfigRecord, nested: bool = False):
    """A dataclass from a (flat) ConfigRecord; a missing required key is an error naming it.

    A nested dataclass is read from the same flat keys, and travels whole: each of its keys
    is required, so a node never fills in a default the cloud did not send."""
    hints = _type_hints(cls)
    kwargs, missing = {}, []
    for f in dataclasses.fields(cls):
        optional = _optional_dataclass(hints[f.name])
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _from_config_record(hints[f.name], record, nested=True)
        elif optional is not None:  # present whole (its first key says so) or absent: None
            first = dataclasses.fields(optional)[0].name
            kwargs[f.name] = (_from_config_record(optional, record, nested=True)
                              if first in record else None)
        elif f.name in record:
            kwargs[f.name] = record[f.name]
        elif nested or f.default is dataclasses.MISSING:
            missing.append(f.name)
    if missing:
        raise ValueError(f"{cls.__name__}: the record lacks {', '.join(missing)}")
    return cls(**kwargs)


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    """A record dataclass's resolved field types: resolving them takes about a millisecond, and
    every message decodes two or three records (10,000 simulated clients: tens of seconds)."""
    return typing.get_type_hints(cls)


def _optional_dataclass(hint) -> type | None:
    """D for a field typed `D | None` with D a dataclass (it travels only when set), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and dataclasses.is_dataclass(rest[0]):
            return rest[0]
    return None
