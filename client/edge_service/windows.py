"""Pure checks and conversions between proto `Window`s and float32 arrays.

Every check raises `WindowError` with a message a sensor-app developer can act on; the servicer
turns it into INVALID_ARGUMENT. Nothing here touches the store or the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protos import edge_pb2

MAX_SOURCE_CHARS = 128
DTYPES = {edge_pb2.FLOAT32: np.dtype("<f4"), edge_pb2.FLOAT64: np.dtype("<f8")}


class WindowError(ValueError):
    """A window the service refuses; the message says what was expected and what was found."""


@dataclass(frozen=True)
class WindowShape:
    channels: int
    length: int

    @property
    def dims(self) -> list[int]:
        return [self.channels, self.length]

    def __str__(self) -> str:
        return f"[{self.channels}, {self.length}]"


def decode_window(window: edge_pb2.Window, shape: WindowShape) -> np.ndarray:
    """A validated float32 array [channels, length], or WindowError."""
    if list(window.shape) != shape.dims:
        raise WindowError(f"shape {list(window.shape)}, expected {shape} (channels, length)")
    if window.dtype not in DTYPES:
        name = edge_pb2.DType.Name(window.dtype) if window.dtype in edge_pb2.DType.values() \
            else str(window.dtype)
        raise WindowError(f"dtype {name}: set FLOAT32 or FLOAT64")
    dtype = DTYPES[window.dtype]
    need = shape.channels * shape.length * dtype.itemsize
    if len(window.data) != need:
        raise WindowError(f"data is {len(window.data)} bytes; shape {shape} in "
                          f"{edge_pb2.DType.Name(window.dtype)} needs {need}")
    x = np.frombuffer(window.data, dtype=dtype).reshape(shape.dims)
    check_finite(x)
    return np.array(x, dtype=np.float32)  # a writable copy: the proto's bytes are read-only


def check_finite(x: np.ndarray) -> None:
    """Rejects NaN and Inf, naming how many and where the first one is."""
    bad = ~np.isfinite(x)
    if bad.any():
        channel, sample = (int(i) for i in np.argwhere(bad)[0])
        raise WindowError(f"{int(bad.sum())} NaN or Inf value(s), first at channel {channel}, "
                          f"sample {sample}")
    if x.dtype == np.float64 and np.abs(x).max() > np.finfo(np.float32).max:
        raise WindowError("values overflow float32")


def check_source(source: str) -> str:
    if not source:
        raise WindowError("source is empty: name the sensor app or stream")
    if len(source) > MAX_SOURCE_CHARS:
        raise WindowError(f"source is {len(source)} characters; at most {MAX_SOURCE_CHARS}")
    return source


def check_captured_at(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise WindowError(f"captured_at {value}: seconds since the epoch, or 0 for unknown")
    return value


def encode_window(x: np.ndarray) -> edge_pb2.Window:
    """A float32 proto window from an array [channels, length] (clients and tests use this)."""
    x = np.ascontiguousarray(x, dtype="<f4")
    return edge_pb2.Window(shape=list(x.shape), dtype=edge_pb2.FLOAT32, data=x.tobytes())
