"""Where tensors are computed: the run's `device` key (auto | cpu | cuda) as a torch.device.

One rule for every side: models live on the compute device, data stays on the CPU where it was
loaded and each batch moves at its point of use (`on`), and everything that leaves a process
(wire records, checkpoints, metrics) is moved back to the CPU first (`to_cpu`). Random draws
keep their seeded CPU generators: a draw that a device tensor needs is made on the CPU and then
moved, so a CPU run draws exactly what it drew before and a GPU run draws the same numbers.

On the CPU nothing here copies anything (`on` returns the tensor itself), so `device: cpu` and
`device: auto` on a machine without CUDA give the same bits as before the key existed. A CUDA
run uses cuDNN's deterministic kernels, so one seed gives one result there; it is not promised
to equal the CPU run bit for bit (other kernels, other summation orders, other dropout draws).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from shared.errors import ConfigError
from shared.unikd.devices import DEVICE_NAMES

CPU = torch.device("cpu")
Tree = TypeVar("Tree")


def resolve_device(name: str, source: str | None = None) -> torch.device:
    """The torch.device of a `device` value: `auto` is cuda where CUDA is available, else cpu.

    `cuda` without a CUDA device is a ConfigError naming the key (and `source`, the config file
    or "--set" it came from, when known), raised before anything trains. Resolving to cuda also
    selects cuDNN's deterministic kernels (`deterministic_cuda`)."""
    if name not in DEVICE_NAMES:
        raise ConfigError("device", f"must be one of {list(DEVICE_NAMES)}, got {name!r}", source)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return CPU
    if not torch.cuda.is_available():
        raise ConfigError("device", "is cuda, but this machine has no usable CUDA device "
                          "(torch.cuda.is_available() is False: no GPU, no driver, or a CPU-only "
                          "torch build); use device: auto or cpu", source)
    deterministic_cuda()
    return torch.device("cuda")


def describe(name: str, source: str | None = None) -> str:
    """'cpu (auto)': the resolved device and the value it came from, for logs and run folders."""
    resolved = resolve_device(name, source).type
    return resolved if resolved == name else f"{resolved} ({name})"


def deterministic_cuda() -> None:
    """The cheap determinism switches: cuDNN picks deterministic kernels and does not benchmark
    (benchmarking picks kernels by timing, which differs from run to run). The costly global
    `torch.use_deterministic_algorithms` (a cuBLAS workspace setting, errors on some ops) is
    left off."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def module_device(module: nn.Module) -> torch.device:
    """Where a module computes: the device of its first parameter (or buffer); cpu if none."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return CPU


def on(device: torch.device, t: torch.Tensor) -> torch.Tensor:
    """`t` on `device`: the tensor itself when already there (no copy, the same bits), else a
    copy. Host-to-device copies may be asynchronous; copies back to the CPU never are."""
    if t.device == device:
        return t
    return t.to(device, non_blocking=device.type != "cpu")


def to_device(tensors: Mapping[Any, torch.Tensor], device: torch.device) -> dict:
    """A mapping of tensors with each one `on(device, ...)`."""
    return {k: on(device, v) for k, v in tensors.items()}


def to_cpu(tree: Tree) -> Tree:
    """Every tensor in nested dicts, lists and tuples moved to the CPU; what goes to disk or the
    wire never holds a device tensor. Where nothing needs moving the very same object comes
    back (a CPU run writes the same bytes as before)."""
    if isinstance(tree, torch.Tensor):
        return tree if tree.device == CPU else tree.cpu()
    if isinstance(tree, dict):
        moved = {k: to_cpu(v) for k, v in tree.items()}
        if all(moved[k] is v for k, v in tree.items()):
            return tree
        out = tree.copy()  # keeps the mapping's own type (a state dict's OrderedDict)
        out.update(moved)
        if hasattr(tree, "_metadata"):  # a state dict's module versions (BN reads them)
            out._metadata = tree._metadata
        return out
    if type(tree) in (list, tuple):
        moved = [to_cpu(v) for v in tree]
        return tree if all(m is v for m, v in zip(moved, tree)) else type(tree)(moved)
    return tree
