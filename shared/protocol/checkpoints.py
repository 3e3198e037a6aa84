"""Every file format the project writes for itself, declared once with a kind and a version.

A checkpoint is a `torch.save`d dict with `"kind"` and `"version"` beside its payload. Every
reader states the kind it expects; a file of another kind or version is refused with an error
naming the file, the kind found and the kind wanted, instead of a KeyError deep inside a loader.
All formats hold tensors, numbers, strings, lists and dicts only, so every load is
`weights_only=True`: opening a checkpoint never runs code from it. Every tensor is written from
the CPU (a GPU run's too) and read onto the CPU (`map_location="cpu"`); a reader moves what it
needs to its own device (shared/unikd/compute.py).

Kinds:
- `teacher`: a frozen (ensemble) teacher: `members` (state dicts), `meta`;
- `central-student`: `unikd distill`'s student: `state_dict`, `norm`, `meta`;
- `fed-resume`: the cloud's full state after a round (`checkpoints/last.pt`), with `ema`
  (the student's EMA) when `distill.ema_decay` > 0;
- `fed-final`: the federation's final student (the EMA when kept, then with `live_student`
  beside it), discriminators and optimizers;
- `edge-bundle`: a student with its architecture and normalisation for `unikd serve`;
- `fed-delivery`: the cloud's last delivered final student (`student`, `mean`, `std`, `dataset`,
  `round`, `run`, `tag`), re-sent to a node that missed it (server/fed/delivery.py).
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.errors import UnikdError
from shared.platform.runs import atomic_write_bytes
from shared.unikd.compute import to_cpu

TEACHER = "teacher"
CENTRAL_STUDENT = "central-student"
FED_RESUME = "fed-resume"
FED_FINAL = "fed-final"
EDGE_BUNDLE = "edge-bundle"
FED_DELIVERY = "fed-delivery"
VERSIONS = {TEACHER: 1, CENTRAL_STUDENT: 1, FED_RESUME: 1, FED_FINAL: 1, EDGE_BUNDLE: 1,
            FED_DELIVERY: 1}


class CheckpointError(UnikdError):
    """A file that is not the checkpoint a reader expects."""


def pack(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    if kind not in VERSIONS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    return {"kind": kind, "version": VERSIONS[kind], **payload}


def to_bytes(kind: str, payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(pack(kind, to_cpu(payload)), buf)
    return buf.getvalue()


def save(path: str | Path, kind: str, payload: dict[str, Any]) -> None:
    """Atomic: write a temp file, fsync, rename; a reader sees the old file or the new one."""
    atomic_write_bytes(path, to_bytes(kind, payload))


def load(path: str | Path, kinds: str | Iterable[str]) -> dict[str, Any]:
    """The checkpoint at `path`, refused unless it is one of `kinds` at our version."""
    path = Path(path)
    wanted = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (expected {' or '.join(wanted)})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holds non-tensor objects
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return check(obj, wanted, str(path))


def check(obj: Any, wanted: tuple[str, ...], name: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or "kind" not in obj:
        raise CheckpointError(f"{name}: a file without a checkpoint kind (expected "
                              f"{' or '.join(wanted)}); it predates versioned checkpoints or is "
                              f"not ours")
    kind, version = obj["kind"], obj.get("version")
    if kind not in wanted:
        raise CheckpointError(f"{name}: a '{kind}' checkpoint, expected {' or '.join(wanted)}")
    if version != VERSIONS[kind]:
        raise CheckpointError(f"{name}: '{kind}' version {version}; this build reads version "
                              f"{VERSIONS[kind]}")
    return obj


# ---------------------------------------------------------------- teacher members


def teacher_members(teacher: nn.Module) -> list[nn.Module]:
    from shared.unikd.models import TeacherEnsemble

    return list(teacher.members) if isinstance(teacher, TeacherEnsemble) else [teacher]


def teacher_state(teacher: nn.Module) -> list[dict[str, torch.Tensor]]:
    return [m.state_dict() for m in teacher_members(teacher)]


def teacher_from_state(states: list[dict[str, torch.Tensor]], spec) -> nn.Module:
    """A frozen teacher (an ensemble when several members) in eval mode, from member states."""
    from shared.unikd.models import TeacherEnsemble, teacher_for

    members = []
    for sd in states:
        m = teacher_for(spec)
        m.load_state_dict(sd)
        members.append(m.eval())
    if not members:
        raise CheckpointError("a teacher with no members")
    return (members[0] if len(members) == 1 else TeacherEnsemble(members)).eval()


def by_member(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Several members' tensors as one flat dict for the wire: "<member>.<name>"."""
    return {f"{m}.{k}": v for m, sd in enumerate(states) for k, v in sd.items()}


def of_members(arrays: dict[str, torch.Tensor], members: int) -> list[dict[str, torch.Tensor]]:
    """`by_member` undone: each member's own names and tensors, members 0 .. members-1."""
    return [{k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{m}.")}
            for m in range(members)]


def teacher_to_arrays(teacher: nn.Module) -> dict[str, torch.Tensor]:
    """One flat dict for the wire: "<member>.<name>"."""
    return by_member(teacher_state(teacher))


def teacher_from_arrays(arrays: dict[str, torch.Tensor], members: int, spec) -> nn.Module:
    return teacher_from_state(of_members(arrays, members), spec)


# ---------------------------------------------------------------- RNG state, weights_only-safe


def capture_rng() -> dict:
    """Python, NumPy and torch RNG state as tensors and ints (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, torch.tensor(internal, dtype=torch.int64),
                       gauss if gauss is not None else float("nan")],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "torch": torch.get_rng_state()}


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal.tolist()),
                     None if gauss != gauss else gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
