"""Converting between torch objects and Flower records, and the typed round config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from torch import nn

from shared.data.datasets import DatasetSpec
from shared.unikd.engine import KDHparams, StepSchedule, UniKDNets
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


def group_named_params(nets: UniKDNets) -> dict[str, dict[str, nn.Parameter]]:
    """Parameters by optimizer group, with the names used on the wire."""
    return {"student": student_params(nets), "d_f": dict(nets.d_f.named_parameters()),
            "d_d": dict(nets.d_d.named_parameters())}


@dataclass
class RoundConfig:
    """The training schedule and settings of one round: the cloud computes it, nodes obey it.

    Every node gets it, simulated or deployed. Where the node's data comes from is not here:
    that is `SimSetup` (simulation only) or the device's own node config.
    """

    round: int
    epoch: int
    step: int
    global_step: int
    beta: float
    alpha: float
    lr: float
    local_steps: int
    seed: int
    batch_size: int
    temperature: float
    lam_ce: float
    lam_dom: float
    target_kd: bool
    adv_to_student: bool
    detach_weights: bool
    bn_policy: str
    dataset: str  # a name for logs; the models' shape travels in the `spec` record
    teacher_hash: str = ""  # "" when the teacher stays in the cloud
    teacher_members: int = 0  # members in the `teacher` snapshot, when one is attached
    phase: str = "unikd"  # "unikd", "teacher" (federated DANN pre-training) or "query"
    double_target_forward: bool = False  # the reference's second target pass (spec §8.14)
    cross_kd: str = "paired"  # with target_kd False: "expected" splits the reference's KD
    source_kd: float = 0.0  # "expected" cross KD: the cloud's T^2 mean source KL this round
    dp_mode: str = "off"  # client-level DP: off | central | local (local: the node noises)
    dp_clip: float = 0.0
    dp_noise: float = 0.0  # noise multiplier z
    dp_count_std: float = 0.0  # record DP: std of the noise on the node's released window count
    secagg: bool = False  # secure aggregation: the train reply carries public keys only
    secagg_clip: float = 0.0  # L2 bound the node clips its update to before masking
    secagg_bits: int = 24  # fixed-point bits per clip unit in Z_{2^64}
    dp_clip_scope: str = "joint"  # record DP: "joint" or "per-network" clipping (dp_sgd.py)
    dp_shares: bool = False  # record DP + SecAgg: the noise is added as 1/t shares at the mask stage

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(dataclasses.asdict(self))

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RoundConfig:
        return _from_config_record(cls, record)

    @property
    def schedule(self) -> StepSchedule:
        return StepSchedule(beta=self.beta, alpha=self.alpha)

    @property
    def hparams(self) -> KDHparams:
        return KDHparams(temperature=self.temperature, lam_ce=self.lam_ce, lam_dom=self.lam_dom,
                         target_kd=self.target_kd, adv_to_student=self.adv_to_student,
                         detach_weights=self.detach_weights,
                         double_target_forward=self.double_target_forward,
                         cross_kd=self.cross_kd)


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


def _from_config_record(cls, record: ConfigRecord):
    """A dataclass from a ConfigRecord; a missing required key is an error naming it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [n for n, f in fields.items() if n not in record
               and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{cls.__name__}: the record lacks {', '.join(missing)}")
    return cls(**{k: record[k] for k in fields if k in record})
