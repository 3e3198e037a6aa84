"""The UNI-KD 1D-CNN (spec §2.1): three conv blocks, global average pool, one linear head.

Teacher and student share the template and differ in width: teacher (m=64, F=128),
student (m=16, F=32). Like timm models, `forward_features` gives the pooled feature vector
and `forward_head` the logits, so hint, discriminator and KD terms can take either.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.data.datasets import DatasetSpec
from shared.unikd.models.pooling import PairMaxPool1d

TEACHER_WIDTH, TEACHER_FEATURES = 64, 128
STUDENT_WIDTH, STUDENT_FEATURES = 16, 32


def conv_block(c_in: int, c_out: int, kernel: int, stride: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(),
        PairMaxPool1d(),  # nn.MaxPool1d(2, 2, padding=1), bit for bit, faster to train
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class CNN1d(nn.Module):
    """Backbone + classifier. Dropout sits in block 1 only, as in the official release (spec §8.11)."""

    def __init__(
        self, in_channels: int, num_classes: int, width: int, features: int,
        kernel: int = 5, stride: int = 1, dropout: float = 0.5,
    ):
        super().__init__()
        self.features_dim = features
        self.block1 = conv_block(in_channels, width, kernel, stride, dropout)
        self.block2 = conv_block(width, 2 * width, 8, 1, 0.0)
        self.block3 = conv_block(2 * width, features, 8, 1, 0.0)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))  # [B, F, L']
        return self.pool(x).flatten(1)  # [B, F]

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)  # [B, C]

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.forward_features(x)
        return h, self.forward_head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def teacher_for(spec: DatasetSpec) -> CNN1d:
    return CNN1d(spec.channels, spec.classes, TEACHER_WIDTH, TEACHER_FEATURES,
                 spec.kernel, spec.stride, spec.dropout)


def student_for(spec: DatasetSpec) -> CNN1d:
    return CNN1d(spec.channels, spec.classes, STUDENT_WIDTH, STUDENT_FEATURES,
                 spec.kernel, spec.stride, spec.dropout)


def count_params(model: nn.Module) -> int:
    """Trainable parameters (BN buffers excluded), as in spec §2.4."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, channels: int, length: int) -> int:
    """Multiply-accumulates per window: convolutions (C_out·L_out·C_in·k) plus linear layers.

    BN, ReLU and pooling are ignored (spec §2.4). Output lengths come from a real forward pass.
    """
    macs = 0

    def on_conv(mod: nn.Conv1d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.shape[1] * out.shape[2] * (mod.in_channels // mod.groups) * mod.kernel_size[0]

    def on_linear(mod: nn.Linear, _inp: tuple, _out: torch.Tensor) -> None:
        nonlocal macs
        macs += mod.in_features * mod.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(on_linear))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, channels, length))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return macs


class TeacherEnsemble(nn.Module):
    """Several teachers read as one: features and logits are the members' means.

    Averaging seeds is a label-free way to get a stronger, less seed-sensitive teacher.
    """

    def __init__(self, members: list[CNN1d]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.features_dim = members[0].features_dim

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m.features_and_logits(x) for m in self.members]
        feat = torch.stack([h for h, _ in outs]).mean(0)
        logits = torch.stack([z for _, z in outs]).mean(0)
        return feat, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]
