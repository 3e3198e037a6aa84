"""The values of the `device` key, without torch: the config schema and a node's config read
them here (neither imports torch); shared/unikd/compute.py turns one into a torch.device."""

from __future__ import annotations

from typing import Literal

DEVICE_NAMES = ("auto", "cpu", "cuda")  # auto: cuda where torch sees a CUDA device, else cpu
DeviceName = Literal["auto", "cpu", "cuda"]  # the same three, as the schema's field type
