"""Converting between torch objects and Flower records, and the typed round config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from torch import nn

from shared.engine import KDHparams, StepSchedule, UniKDNets


def to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    """Arrays copied out of the live tensors (so later in-place updates do not leak in)."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy().copy()) for k, v in tensors.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


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
    """Everything a client needs for one round; the server computes it, clients never do."""

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
    teacher_hash: str  # "" when the teacher stays in the cloud
    # data setup, for simulated clients; a deployed node's own data path wins
    dataset: str
    data_path: str
    synth_shift: float
    target: str
    partition: str
    num_clients: int
    phase: str = "unikd"  # "unikd" or "teacher" (federated DANN pre-training)
    double_target_forward: bool = False  # the reference's second target pass (spec §8.14)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(dataclasses.asdict(self))

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RoundConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: record[k] for k in names if k in record})

    @property
    def schedule(self) -> StepSchedule:
        return StepSchedule(beta=self.beta, alpha=self.alpha)

    @property
    def hparams(self) -> KDHparams:
        return KDHparams(self.temperature, self.lam_ce, self.lam_dom, self.target_kd,
                         self.adv_to_student, self.detach_weights, self.double_target_forward)
