"""Models the service answers with, and the slot that swaps them atomically.

Two formats, both taking raw windows (the source-statistics z-scoring is part of the model):
- a PyTorch edge bundle `*.pt`: {"kind", "arch", "state_dict", "norm", "meta"}, loaded with
  `weights_only=True`, so no pickled code runs on the device;
- an ONNX file `*.onnx` from `unikd export`, fp32 or int8, run by ONNX Runtime, with the same
  metadata in its `metadata_props`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

from client.edge_service.windows import WindowShape
from shared.errors import UnikdError
from shared.protocol import checkpoints
from shared.unikd.models import CNN1d

if TYPE_CHECKING:
    import onnxruntime as ort

BUNDLE_KIND = checkpoints.EDGE_BUNDLE


class NormalizedStudent(nn.Module):
    """Raw window in, logits out: z-scoring with the source statistics, then the student."""

    def __init__(self, student: CNN1d, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.student = student
        self.register_buffer("mean", mean.reshape(1, -1, 1).float())  # [1, C, 1]
        self.register_buffer("std", std.reshape(1, -1, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student((x - self.mean) / self.std)  # [B, classes]


@dataclass(frozen=True)
class ModelMeta:
    """What Status reports about a model; export writes it, loading reads it back."""

    path: str
    sha256: str
    format: str  # torch | onnx | onnx-int8
    version: str
    dataset: str
    scenario: str
    method: str
    round: int  # -1 for a centralized run
    channels: int
    length: int
    class_names: tuple[str, ...]

    @property
    def shape(self) -> WindowShape:
        return WindowShape(self.channels, self.length)

    @classmethod
    def from_props(cls, props: dict[str, str], path: Path, sha256: str) -> ModelMeta:
        """From the flat string metadata both formats carry; a missing key is an error."""
        try:
            return cls(str(path), sha256, props["format"], props.get("version", sha256[:12]),
                       props["dataset"], props.get("scenario", ""), props.get("method", ""),
                       int(props.get("round", "-1")), int(props["channels"]),
                       int(props["length"]), tuple(filter(None, props["class_names"].split(","))))
        except (KeyError, ValueError) as exc:
            raise UnikdError(f"{path}: model metadata is incomplete ({exc}); re-export it with "
                             "`unikd export`") from None


class Predictor(Protocol):
    meta: ModelMeta

    def logits(self, x: np.ndarray) -> np.ndarray:
        """[B, C, L] float32 raw windows -> [B, classes] logits."""
        ...


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TorchPredictor:
    def __init__(self, path: Path):
        try:
            bundle = checkpoints.load(path, BUNDLE_KIND)
        except checkpoints.CheckpointError as err:
            raise UnikdError(f"{err} (write an edge bundle with `unikd export --format torch`)"
                             ) from None
        self.meta = ModelMeta.from_props(bundle["meta"], path, file_sha256(path))
        self.model = bundle_model(bundle)

    @torch.inference_mode()
    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(x)).numpy()


def bundle_model(bundle: dict) -> NormalizedStudent:
    student = CNN1d(**bundle["arch"])
    student.load_state_dict(bundle["state_dict"])
    return NormalizedStudent(student, bundle["norm"]["mean"], bundle["norm"]["std"]).eval()


class OnnxPredictor:
    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), onnx_session_options(threads),
                                            providers=["CPUExecutionProvider"])
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.meta = ModelMeta.from_props(props, path, file_sha256(path))
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def onnx_session_options(threads: int) -> ort.SessionOptions:
    import onnxruntime as ort  # only a device that serves ONNX needs the runtime

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # warnings about unused initializers are noise on a device
    return opts


def load_predictor(path: str | Path, threads: int = 1) -> Predictor:
    """A predictor for a `.pt` edge bundle or an `.onnx` file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UnikdError(f"{path}: model file not found")
    if path.suffix not in (".onnx", ".pt"):
        raise UnikdError(f"{path}: unknown model format '{path.suffix}'; expected .onnx or .pt")
    try:
        return OnnxPredictor(path, threads) if path.suffix == ".onnx" else TorchPredictor(path)
    except UnikdError:
        raise
    except Exception as exc:  # torch and onnxruntime raise many types for a truncated file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UnikdError(f"{path}: cannot be loaded as a model ({type(exc).__name__}: "
                         f"{first})") from None


@dataclass(frozen=True)
class Loaded:
    predictor: Predictor
    generation: int
    loaded_at: float


class ModelSlot:
    """The model in service. `swap` replaces it in one reference assignment under the lock.

    A call takes `current()` once and keeps that reference, so a prediction already running
    finishes on the model it started with; the old model is freed when the last one returns.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: Loaded | None = None

    def current(self) -> Loaded | None:
        with self._lock:
            return self._loaded

    def swap(self, predictor: Predictor) -> Loaded:
        with self._lock:
            generation = self._loaded.generation + 1 if self._loaded else 1
            self._loaded = Loaded(predictor, generation, time.time())
            return self._loaded
