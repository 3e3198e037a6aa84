"""EdgeServicer: one method per RPC of protos/edge.proto, each thin over pure helpers.

Bad input ends the call with `context.abort(INVALID_ARGUMENT, reason)`; the reason names the
window's position in the call and what was wrong with it. Servicer state (the counters) sits
behind a lock; the model slot and the store guard themselves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

import grpc
import numpy as np

from client.edge_service.models import Loaded, ModelMeta, ModelSlot
from client.edge_service.store import NewWindow, WindowStore
from client.edge_service.versions import version_of
from client.edge_service.windows import (WindowError, WindowShape, check_captured_at,
                                         check_source, decode_window)
from protos import edge_pb2, edge_pb2_grpc
from shared.errors import UnikdError

log = logging.getLogger(__name__)
MAX_CALL_BYTES = 64 * 2**20  # one Ingest call is validated in memory before it commits


def ingest_row(request: edge_pb2.IngestRequest, shape: WindowShape) -> NewWindow:
    """A validated store row from one request, or WindowError."""
    source = check_source(request.source)
    if not request.HasField("window"):
        raise WindowError("no window in the request")
    x = decode_window(request.window, shape)
    label = request.label if request.HasField("label") else None
    if label is not None and label < 0:
        raise WindowError(f"label {label} is negative")
    return NewWindow(source, x, check_captured_at(request.captured_at), label)


def collect_rows(requests: Iterable[edge_pb2.IngestRequest], shape: WindowShape,
                 limit: int) -> list[NewWindow]:
    """Validate a whole Ingest stream before anything is written (nothing partial)."""
    rows: list[NewWindow] = []
    for i, request in enumerate(requests):
        if len(rows) >= limit:
            raise OverflowError(f"more than {limit} windows in one Ingest call; split the stream")
        try:
            rows.append(ingest_row(request, shape))
        except WindowError as err:
            raise WindowError(f"window {i} (source '{request.source}'): {err}") from None
    return rows


def model_info(loaded: Loaded) -> edge_pb2.ModelInfo:
    m: ModelMeta = loaded.predictor.meta
    return edge_pb2.ModelInfo(
        generation=loaded.generation, sha256=m.sha256, version=m.version, format=m.format,
        dataset=m.dataset, scenario=m.scenario, method=m.method, round=m.round,
        channels=m.channels, length=m.length, class_names=list(m.class_names),
        loaded_at=loaded.loaded_at, path=m.path, installed_version=version_of(m.path))


def predict_reply(loaded: Loaded, x: np.ndarray, request_id: str) -> edge_pb2.PredictReply:
    logits = loaded.predictor.logits(x[None])[0]  # [classes]
    label = int(np.argmax(logits))
    names = loaded.predictor.meta.class_names
    return edge_pb2.PredictReply(request_id=request_id, logits=logits.tolist(), label=label,
                                 class_name=names[label] if label < len(names) else "",
                                 model_generation=loaded.generation)


class EdgeServicer(edge_pb2_grpc.EdgeDeviceServicer):
    def __init__(self, store: WindowStore, slot: ModelSlot, shape: WindowShape,
                 reload: Callable[[], Loaded] | None = None,
                 max_call_bytes: int = MAX_CALL_BYTES):
        self.store, self.slot, self.shape, self._reload = store, slot, shape, reload
        # A call larger than the retention budget would evict its own windows: refuse it.
        per_call = max(1, max_call_bytes // (4 * shape.channels * shape.length))
        self.max_windows_per_call = min(per_call, store.retention.max_windows or per_call)
        self._lock = threading.Lock()
        self._predictions = 0
        self._ingested = 0  # windows accepted since the service started (its /metrics)

    def Ingest(self, request_iterator: Iterator[edge_pb2.IngestRequest],
               context: grpc.ServicerContext) -> edge_pb2.IngestReply:
        try:
            rows = collect_rows(request_iterator, self.shape, self.max_windows_per_call)
        except WindowError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{err}; nothing was stored")
        except OverflowError as err:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{err}; nothing was stored")
        if not rows:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream held no windows")
        result = self.store.append(rows)
        with self._lock:
            self._ingested += result.accepted
        return edge_pb2.IngestReply(accepted=result.accepted, first_id=result.first_id,
                                    last_id=result.last_id, evicted=result.evicted)

    def Predict(self, request: edge_pb2.PredictRequest,
                context: grpc.ServicerContext) -> edge_pb2.PredictReply:
        loaded = self._model(context)  # taken once: a swap now does not affect this call
        return self._answer(loaded, request, context, "request")

    def StreamPredict(self, request_iterator: Iterator[edge_pb2.PredictRequest],
                      context: grpc.ServicerContext) -> Iterator[edge_pb2.PredictReply]:
        for i, request in enumerate(request_iterator):
            # Each window takes the model in service when it arrives, so a long stream moves
            # to a new model at a window boundary; the reply's generation says which answered.
            yield self._answer(self._model(context), request, context, f"request {i}")

    def Status(self, request: edge_pb2.StatusRequest,
               context: grpc.ServicerContext) -> edge_pb2.StatusReply:
        stats = self.store.stats()
        loaded = self.slot.current()
        with self._lock:
            predictions = self._predictions
        return edge_pb2.StatusReply(
            model=model_info(loaded) if loaded else None,
            sources=[edge_pb2.SourceCount(source=s, windows=n)
                     for s, n in stats.per_source.items()],
            windows=stats.windows, store_bytes=stats.bytes_on_disk,
            last_round=max(stats.last_round, loaded.predictor.meta.round if loaded else -1),
            predictions=predictions, evicted=stats.evicted)

    def ReloadModel(self, request: edge_pb2.ReloadModelRequest,
                    context: grpc.ServicerContext) -> edge_pb2.ModelInfo:
        if self._reload is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "the service was started without --model: nothing to reload")
        try:
            loaded = self._reload()
        except UnikdError as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{err}; the previous model stays in service")
        return model_info(loaded)

    @property
    def predictions(self) -> int:
        """Windows predicted since the service started."""
        with self._lock:
            return self._predictions

    @property
    def ingested(self) -> int:
        """Windows ingested (accepted) since the service started."""
        with self._lock:
            return self._ingested

    def _model(self, context: grpc.ServicerContext) -> Loaded:
        loaded = self.slot.current()
        if loaded is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "no model loaded: start `unikd serve --model FILE`, then ReloadModel")
        return loaded

    def _answer(self, loaded: Loaded, request: edge_pb2.PredictRequest,
                context: grpc.ServicerContext, where: str) -> edge_pb2.PredictReply:
        try:
            x = decode_window(request.window, self.shape)
        except WindowError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{where} '{request.request_id}': {err}")
        reply = predict_reply(loaded, x, request.request_id)
        with self._lock:
            self._predictions += 1
        return reply
