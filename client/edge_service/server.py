"""Transport for the edge service: `create_server(address, servicer) -> (server, port, health)`
builds and binds; `start_service` wires the store, the model slot and the reloader; `serve`
runs until SIGTERM or Ctrl-C and stops gracefully.

By default the service listens on 127.0.0.1 or a Unix socket, so nothing leaves the device; an
off-device address needs TLS (for a gateway) or an explicit `insecure_remote`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from client.edge_service import versions
from client.edge_service.models import Loaded, ModelSlot, load_predictor
from client.edge_service.servicer import EdgeServicer
from client.edge_service.store import Retention, WindowStore
from client.edge_service.windows import WindowShape
from protos import edge_pb2, edge_pb2_grpc
from shared.data.adatime import dataset_spec
from shared.errors import UnikdError

log = logging.getLogger(__name__)
SERVICE_NAME = edge_pb2.DESCRIPTOR.services_by_name["EdgeDevice"].full_name
DEFAULT_ADDRESS = "127.0.0.1:50071"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # when set, clients must present a certificate it signed

    def credentials(self) -> grpc.ServerCredentials:
        pair = [(self.key.read_bytes(), self.cert.read_bytes())]
        if self.client_ca is None:
            return grpc.ssl_server_credentials(pair)
        return grpc.ssl_server_credentials(pair, self.client_ca.read_bytes(),
                                           require_client_auth=True)


def is_local(address: str) -> bool:
    """Unix sockets and loopback hosts stay on the device."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(address: str, tls: TlsFiles | None, insecure_remote: bool) -> None:
    if not is_local(address) and tls is None and not insecure_remote:
        raise UnikdError(f"address {address} is reachable off the device: give --tls-cert and "
                         "--tls-key (for a gateway), or bind 127.0.0.1 or unix:PATH")


def configure_health(server: grpc.Server) -> health.HealthServicer:
    """The standard grpc.health.v1 service: SERVING for the server and for EdgeDevice."""
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", SERVICE_NAME):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


def create_server(address: str, servicer: EdgeServicer, tls: TlsFiles | None = None,
                  max_workers: int = 8) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A bound, not yet started server; port 0 picks a free port (returned)."""
    # so_reuseport=0: a second service on the same port must fail, not share it silently.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.so_reuseport", 0)])
    edge_pb2_grpc.add_EdgeDeviceServicer_to_server(servicer, server)
    health_servicer = configure_health(server)
    try:
        port = (server.add_secure_port(address, tls.credentials()) if tls
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise UnikdError(f"cannot listen on {address}: {exc}") from None
    return server, port, health_servicer


class Reloader:
    """Loads the model file and swaps it in; one load at a time, the same file every time."""

    def __init__(self, path: Path, slot: ModelSlot, shape: WindowShape, threads: int = 1):
        self.path, self.slot, self.shape, self.threads = path, slot, shape, threads
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None

    def reload(self) -> Loaded:
        with self._lock:
            self._seen = file_signature(self.path)
            predictor = load_predictor(self.path, self.threads)
            if predictor.meta.shape != self.shape:
                raise UnikdError(f"{self.path}: model takes windows of shape "
                                 f"{predictor.meta.shape}, the service and its store hold "
                                 f"{self.shape}")
            current = self.slot.current()
            if current is not None and current.predictor.meta.sha256 == predictor.meta.sha256:
                return current  # the same bytes: keep the generation, nothing to swap
            loaded = self.slot.swap(predictor)
        log.info("model generation %d in service: %s (%s, sha256 %s)", loaded.generation,
                 self.path, predictor.meta.format, predictor.meta.sha256[:12])
        return loaded

    def changed(self) -> bool:
        return file_signature(self.path) != self._seen


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime): `unikd edge pull` renames a new file in, which changes the inode."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def watch_model(reloader: Reloader, interval_s: float, stop: threading.Event) -> threading.Thread:
    """Polls the model file and hot-swaps when it changes (a student after a round, a pull)."""

    def loop() -> None:
        while not stop.wait(interval_s):
            if not reloader.changed():
                continue
            try:
                reloader.reload()
            except UnikdError as err:  # a bad file must not stop the watcher or the service
                log.error("model not swapped: %s; the previous model stays in service", err)

    thread = threading.Thread(target=loop, name="model-watch", daemon=True)
    thread.start()
    return thread


@dataclass
class ServeOptions:
    store: Path
    model: Path | None = None
    model_dir: Path | None = None  # numbered versions, `current.pt` in service (versions.py)
    dataset: str | None = None  # gives the window shape when no model is loaded
    data: Path | None = None  # an AdaTime folder: GENERIC's window shape, read from its files
    address: str = DEFAULT_ADDRESS
    max_windows: int | None = None
    max_mb: float | None = None
    max_age_days: float | None = None
    threads: int = 1
    watch_s: float = 2.0  # 0 turns the file watcher off; ReloadModel still works
    tls: TlsFiles | None = None
    insecure_remote: bool = False
    max_workers: int = 8
    metrics_port: int = 0  # Prometheus /metrics on 127.0.0.1 (metrics.py); 0: none


def window_shape(opts: ServeOptions) -> WindowShape:
    if opts.model is not None and (opts.model_dir is None or opts.model.exists()):
        return load_predictor(opts.model, opts.threads).meta.shape
    if opts.dataset or opts.data:
        spec = dataset_spec(opts.dataset or "GENERIC", opts.data)
        return WindowShape(spec.channels, spec.length)
    raise UnikdError("give --model FILE, --dataset NAME or --data DIR (an empty --model-dir "
                     "needs one of the last two): the service must know the window shape")


@dataclass
class EdgeService:
    server: grpc.Server
    port: int
    address: str  # as bound: the real port in place of 0
    servicer: EdgeServicer
    health: health.HealthServicer
    store: WindowStore
    stop_event: threading.Event = field(default_factory=threading.Event)
    metrics: object | None = None  # the /metrics HTTP server, when one runs

    def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, let running calls finish for `grace_s`, close the store."""
        self.stop_event.set()
        if self.metrics is not None:
            self.metrics.shutdown()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        self.store.close()


def start_service(opts: ServeOptions) -> EdgeService:
    """Everything `unikd serve` runs, started and returned (tests call this directly)."""
    check_address(opts.address, opts.tls, opts.insecure_remote)
    if opts.model_dir is not None:
        if opts.model is not None:
            raise UnikdError("give --model FILE or --model-dir DIR, not both")
        opts.model = Path(opts.model_dir) / versions.CURRENT  # may not exist yet
    shape = window_shape(opts)
    if opts.model_dir is not None:  # installers check a student's shape against it
        versions.write_service_shape(opts.model_dir, shape)
    store = WindowStore(opts.store, shape,
                        Retention.from_limits(shape, opts.max_windows, opts.max_mb,
                                              opts.max_age_days))
    slot, reload = ModelSlot(), None
    stop = threading.Event()
    if opts.model is not None:
        reloader = Reloader(opts.model, slot, shape, opts.threads)
        if opts.model_dir is None or opts.model.exists():  # an empty model dir waits
            reloader.reload()
        reload = reloader.reload
        if opts.watch_s > 0:
            watch_model(reloader, opts.watch_s, stop)
    servicer = EdgeServicer(store, slot, shape, reload)
    metrics = None
    if opts.metrics_port:
        from client.edge_service.metrics import start_metrics

        try:
            metrics, _ = start_metrics(servicer, opts.metrics_port)
        except UnikdError:
            stop.set()
            store.close()
            raise
    server, port, health_servicer = create_server(opts.address, servicer, opts.tls,
                                                  opts.max_workers)
    server.start()
    return EdgeService(server, port, bound_address(opts.address, port), servicer,
                       health_servicer, store, stop, metrics)


def bound_address(address: str, port: int) -> str:
    if address.startswith("unix") or not address.endswith(":0"):
        return address
    return f"{address[:-2]}:{port}"


def _print(line: str) -> None:
    print(line, flush=True)  # a supervisor (or a test) reads the bound address from stdout


def serve(opts: ServeOptions, announce: Callable[[str], None] = _print) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    service = start_service(opts)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    announce(f"unikd serve: listening on {service.address} (store {opts.store}, "
             f"model {opts.model or 'none'})")
    done.wait()
    log.info("stopping: finishing running calls")
    service.stop()
