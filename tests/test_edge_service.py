"""The on-device gRPC service: real servers on 127.0.0.1:0 (or a Unix socket), real stores.

Covers ingest with validation (nothing partial), predictions on both formats, Status, health,
hot swap with in-flight calls, the file watcher, TLS, address policy, the retention policy, and
crash safety: a `unikd serve` process killed during Ingest keeps exactly the acknowledged windows.
"""

from __future__ import annotations

import datetime
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.edge_service.models import ModelSlot, TorchPredictor, load_predictor
from client.edge_service.server import (SERVICE_NAME, ServeOptions, TlsFiles, check_address,
                                        is_local, start_service)
from client.edge_service.store import (NewWindow, Retention, WindowStore, record_round,
                                       store_labelled, store_windows, window_ids)
from client.edge_service.windows import WindowError, WindowShape, decode_window, encode_window
from client.edge_service.export import write_round_bundle
from protos import edge_pb2, edge_pb2_grpc
from shared.data.loaders import Normalizer
from shared.data.datasets import get_spec
from shared.errors import DataError, UnikdError
from shared.unikd.models import student_for

REPO_ROOT = Path(__file__).resolve().parents[1]
HAR = get_spec("HAR")
SHAPE = WindowShape(HAR.channels, HAR.length)


# ---------------------------------------------------------------- helpers


def make_bundle(path: Path, seed: int, round_: int = 3, spec=HAR) -> Path:
    """A PyTorch edge bundle of a randomly initialised student (as a round would deliver)."""
    torch.manual_seed(seed)
    student = student_for(spec)
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    norm = Normalizer(torch.linspace(-1, 1, spec.channels), torch.linspace(0.5, 2, spec.channels))
    write_round_bundle(path, state, norm, spec, round_)
    return path


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, HAR.channels, HAR.length)).astype(np.float32)


def ingest_requests(x: np.ndarray, source: str = "acc") -> list[edge_pb2.IngestRequest]:
    return [edge_pb2.IngestRequest(source=source, window=encode_window(w), captured_at=1.0)
            for w in x]


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "model" / "student.pt", seed=1)


@pytest.fixture
def service(tmp_path: Path, model_path: Path):
    svc = start_service(ServeOptions(store=tmp_path / "store.db", model=model_path,
                                     address="127.0.0.1:0", watch_s=0))
    yield svc
    svc.stop(0)


@pytest.fixture
def stub(service) -> edge_pb2_grpc.EdgeDeviceStub:
    with grpc.insecure_channel(service.address) as channel:
        yield edge_pb2_grpc.EdgeDeviceStub(channel)


# ---------------------------------------------------------------- ingest and status


def test_ingest_then_status_counts_windows_per_source(stub, service):
    # Execute
    first = stub.Ingest(iter(ingest_requests(windows(5), "acc")))
    second = stub.Ingest(iter(ingest_requests(windows(3, seed=1), "gyro")))
    status = stub.Status(edge_pb2.StatusRequest())
    # Assert
    assert (first.accepted, first.first_id, first.last_id) == (5, 1, 5)
    assert (second.accepted, second.first_id, second.last_id) == (3, 6, 8)
    assert {s.source: s.windows for s in status.sources} == {"acc": 5, "gyro": 3}
    assert status.windows == 8 and status.store_bytes > 8 * 4 * 9 * 128
    assert status.model.generation == 1 and status.model.format == "torch"
    assert len(status.model.sha256) == 64 and status.model.dataset == "HAR"
    assert status.last_round == 3  # the bundle came from round 3; no round recorded on the store
    assert np.array_equal(store_windows(service.store.path).numpy(),
                          np.concatenate([windows(5), windows(3, seed=1)]))


def _corrupt(kind: str) -> edge_pb2.IngestRequest:
    x = windows(1)[0]
    request = ingest_requests(x[None])[0]
    if kind == "nan":
        x = x.copy()
        x[4, 17] = np.nan
        request.window.CopyFrom(encode_window(x))
    elif kind == "inf":
        x = x.copy()
        x[0, 0] = np.inf
        request.window.CopyFrom(encode_window(x))
    elif kind == "shape":
        request.window.CopyFrom(encode_window(x[:, :100]))
    elif kind == "dtype":
        request.window.dtype = edge_pb2.DTYPE_UNSPECIFIED
    elif kind == "bytes":
        request.window.data = request.window.data[:-4]
    elif kind == "source":
        request.source = ""
    elif kind == "no-window":
        request.ClearField("window")
    return request


@pytest.mark.parametrize("kind, message", [
    ("nan", "1 NaN or Inf value(s), first at channel 4, sample 17"),
    ("inf", "NaN or Inf"),
    ("shape", "shape [9, 100], expected [9, 128]"),
    ("dtype", "dtype DTYPE_UNSPECIFIED: set FLOAT32 or FLOAT64"),
    ("bytes", "data is 4604 bytes"),
    ("source", "source is empty"),
    ("no-window", "no window in the request"),
])
def test_a_bad_window_rejects_the_whole_call(stub, kind, message):
    # Prepare: two good windows, then the bad one
    requests = ingest_requests(windows(2)) + [_corrupt(kind)]
    # Execute
    with pytest.raises(grpc.RpcError) as err:
        stub.Ingest(iter(requests))
    # Assert: a clear status naming the window, and nothing partial in the store
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "window 2" in err.value.details() and message in err.value.details()
    assert "nothing was stored" in err.value.details()
    assert stub.Status(edge_pb2.StatusRequest()).windows == 0


def test_empty_ingest_stream_is_invalid(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Ingest(iter([]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_call_larger_than_the_retention_budget_is_refused(tmp_path):
    svc = start_service(ServeOptions(store=tmp_path / "s.db", dataset="HAR", max_windows=3,
                                     address="127.0.0.1:0"))
    try:
        with grpc.insecure_channel(svc.address) as channel:
            stub = edge_pb2_grpc.EdgeDeviceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Ingest(iter(ingest_requests(windows(4))))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "more than 3 windows" in err.value.details()
            assert stub.Ingest(iter(ingest_requests(windows(3)))).accepted == 3
            assert stub.Ingest(iter(ingest_requests(windows(2)))).evicted == 2
    finally:
        svc.stop(0)


def test_float64_windows_and_labels_are_stored_as_float32(stub, service):
    x = windows(2).astype(np.float64)
    requests = [edge_pb2.IngestRequest(source="app", window=edge_pb2.Window(
        shape=[9, 128], dtype=edge_pb2.FLOAT64, data=w.tobytes()), label=i + 1)
        for i, w in enumerate(x)]
    stub.Ingest(iter(requests))
    xs, ys = store_labelled(service.store.path)
    assert np.array_equal(xs.numpy(), x.astype(np.float32)) and ys.tolist() == [1, 2]


# ---------------------------------------------------------------- predictions


def test_predict_and_stream_predict_match_the_model(stub, model_path):
    x = windows(6, seed=3)
    expected = TorchPredictor(model_path).logits(x)
    single = stub.Predict(edge_pb2.PredictRequest(window=encode_window(x[0]), request_id="one"))
    replies = list(stub.StreamPredict(iter(
        edge_pb2.PredictRequest(window=encode_window(w), request_id=f"r{i}")
        for i, w in enumerate(x))))
    assert single.request_id == "one" and single.model_generation == 1
    np.testing.assert_allclose(single.logits, expected[0], rtol=1e-5, atol=1e-5)
    assert [r.request_id for r in replies] == [f"r{i}" for i in range(6)]
    np.testing.assert_allclose([list(r.logits) for r in replies], expected, rtol=1e-5, atol=1e-5)
    assert [r.label for r in replies] == expected.argmax(1).tolist()
    assert replies[0].class_name == HAR.class_names[replies[0].label]
    assert stub.Status(edge_pb2.StatusRequest()).predictions == 7


def test_a_bad_window_ends_the_prediction_stream_with_its_index(stub):
    good = edge_pb2.PredictRequest(window=encode_window(windows(1)[0]), request_id="ok")
    bad = edge_pb2.PredictRequest(window=encode_window(windows(1)[0][:, :64]), request_id="bad")
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamPredict(iter([good, bad])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request 1 'bad': shape [9, 64]" in err.value.details()


def test_without_a_model_ingest_works_and_predict_fails_precondition(tmp_path):
    svc = start_service(ServeOptions(store=tmp_path / "s.db", dataset="HAR",
                                     address="127.0.0.1:0"))
    try:
        with grpc.insecure_channel(svc.address) as channel:
            stub = edge_pb2_grpc.EdgeDeviceStub(channel)
            assert stub.Ingest(iter(ingest_requests(windows(2)))).accepted == 2
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(edge_pb2.PredictRequest(window=encode_window(windows(1)[0])))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert not stub.Status(edge_pb2.StatusRequest()).HasField("model")
    finally:
        svc.stop(0)


def test_health_service_reports_serving(service):
    with grpc.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- hot swap


class GatedPredictor:
    """Wraps a predictor; each call waits until the test opens the gate."""

    def __init__(self, inner):
        self.inner, self.meta = inner, inner.meta
        self.entered, self.gate = threading.Event(), threading.Event()

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        return self.inner.logits(x)


def test_hot_swap_is_atomic_and_in_flight_calls_finish_on_the_old_model(service, stub,
                                                                         model_path):
    # Prepare: generation 2 is the old model behind a gate; a call enters it and blocks there
    old = GatedPredictor(service.servicer.slot.current().predictor)
    assert service.servicer.slot.swap(old).generation == 2
    x = windows(1, seed=5)[0]
    in_flight = stub.Predict.future(edge_pb2.PredictRequest(window=encode_window(x),
                                                            request_id="slow"))
    assert old.entered.wait(10)
    # Execute: a new student lands at the model path and the service reloads it
    make_bundle(model_path, seed=2, round_=4)
    info = stub.ReloadModel(edge_pb2.ReloadModelRequest())
    fresh = stub.Predict(edge_pb2.PredictRequest(window=encode_window(x), request_id="fresh"))
    old.gate.set()
    slow = in_flight.result(timeout=10)
    # Assert: the swap did not wait for the running call; each call used one model throughout
    assert info.generation == 3 and info.round == 4
    assert fresh.model_generation == 3 and slow.model_generation == 2
    new_logits = load_predictor(model_path).logits(x[None])[0]
    np.testing.assert_allclose(fresh.logits, new_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(slow.logits, old.inner.logits(x[None])[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(slow.logits, fresh.logits)


def test_reload_of_the_same_bytes_keeps_the_generation(stub):
    assert stub.ReloadModel(edge_pb2.ReloadModelRequest()).generation == 1


def test_reload_refuses_a_model_for_another_window_shape(stub, model_path):
    make_bundle(model_path, seed=3, spec=get_spec("HHAR"))  # 3 channels, not 9
    with pytest.raises(grpc.RpcError) as err:
        stub.ReloadModel(edge_pb2.ReloadModelRequest())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "[3, 128]" in err.value.details() and "previous model stays" in err.value.details()
    assert stub.Status(edge_pb2.StatusRequest()).model.generation == 1


def test_the_watcher_swaps_when_the_file_changes_and_survives_a_bad_file(tmp_path):
    model = make_bundle(tmp_path / "student.pt", seed=1)
    svc = start_service(ServeOptions(store=tmp_path / "s.db", model=model,
                                     address="127.0.0.1:0", watch_s=0.05))
    try:
        with grpc.insecure_channel(svc.address) as channel:
            stub = edge_pb2_grpc.EdgeDeviceStub(channel)
            bad = tmp_path / "bad.pt"
            bad.write_bytes(b"not a model")
            os.replace(bad, model)  # an atomic rename, as `unikd edge-pull` does
            time.sleep(0.3)
            assert stub.Status(edge_pb2.StatusRequest()).model.generation == 1
            make_bundle(model, seed=7, round_=9)
            deadline = time.monotonic() + 10
            while stub.Status(edge_pb2.StatusRequest()).model.generation < 2:
                assert time.monotonic() < deadline, "the watcher never swapped the model"
                time.sleep(0.05)
            assert stub.Status(edge_pb2.StatusRequest()).model.round == 9
    finally:
        svc.stop(0)


def test_slot_generations_increase_by_one():
    slot = ModelSlot()
    assert slot.current() is None
    assert [slot.swap(object()).generation for _ in range(3)] == [1, 2, 3]  # type: ignore[arg-type]


# ---------------------------------------------------------------- transport


def test_unix_socket(tmp_path, model_path):
    sock = tmp_path / "edge.sock"
    svc = start_service(ServeOptions(store=tmp_path / "s.db", model=model_path,
                                     address=f"unix:{sock}", watch_s=0))
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            status = edge_pb2_grpc.EdgeDeviceStub(channel).Status(edge_pb2.StatusRequest())
        assert status.model.generation == 1 and sock.exists()
    finally:
        svc.stop(0)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "edge.crt", tmp_path / "edge.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_tls_for_a_gateway(tmp_path, model_path):
    cert, key = _self_signed(tmp_path)
    svc = start_service(ServeOptions(store=tmp_path / "s.db", model=model_path,
                                     address="127.0.0.1:0", watch_s=0, tls=TlsFiles(cert, key)))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(svc.address, creds) as channel:
            status = edge_pb2_grpc.EdgeDeviceStub(channel).Status(edge_pb2.StatusRequest(),
                                                                  timeout=10)
        assert status.model.generation == 1
        with grpc.insecure_channel(svc.address) as channel:  # plaintext is not accepted
            with pytest.raises(grpc.RpcError):
                edge_pb2_grpc.EdgeDeviceStub(channel).Status(edge_pb2.StatusRequest(), timeout=2)
    finally:
        svc.stop(0)


@pytest.mark.parametrize("address, local", [
    ("127.0.0.1:50071", True), ("localhost:1", True), ("[::1]:5", True), ("127.3.0.1:9", True),
    ("unix:/run/unikd.sock", True), ("0.0.0.0:50071", False), ("[::]:50071", False),
    ("192.168.1.4:50071", False), ("edge.example:443", False),
])
def test_only_loopback_and_unix_sockets_count_as_local(address, local):
    assert is_local(address) is local


def test_an_off_device_address_needs_tls_or_an_explicit_opt_in(tmp_path):
    with pytest.raises(UnikdError, match="reachable off the device"):
        check_address("0.0.0.0:50071", None, insecure_remote=False)
    check_address("0.0.0.0:50071", None, insecure_remote=True)
    check_address("0.0.0.0:50071", TlsFiles(tmp_path / "c", tmp_path / "k"), False)


def test_a_busy_port_is_an_error_not_a_shared_port(service, tmp_path, model_path):
    with pytest.raises(UnikdError, match="cannot listen"):
        start_service(ServeOptions(store=tmp_path / "other.db", model=model_path,
                                   address=service.address, watch_s=0))


# ---------------------------------------------------------------- windows and the store


def test_decode_window_accepts_float32_and_float64():
    x = windows(1)[0]
    assert np.array_equal(decode_window(encode_window(x), SHAPE), x)
    w64 = edge_pb2.Window(shape=[9, 128], dtype=edge_pb2.FLOAT64,
                          data=x.astype(np.float64).tobytes())
    assert decode_window(w64, SHAPE).dtype == np.float32
    with pytest.raises(WindowError, match="overflow"):
        decode_window(edge_pb2.Window(shape=[9, 128], dtype=edge_pb2.FLOAT64,
                                      data=np.full((9, 128), 1e300).tobytes()), SHAPE)


def _rows(n: int, source: str = "s", seed: int = 0) -> list[NewWindow]:
    return [NewWindow(source, w) for w in windows(n, seed)]


def test_store_keeps_the_newest_windows_within_the_count_policy(tmp_path):
    store = WindowStore(tmp_path / "s.db", SHAPE, Retention(max_windows=5))
    store.append(_rows(3))
    result = store.append(_rows(4, seed=1))
    assert result.evicted == 2 and store.evicted_total == 2
    assert window_ids(store.path) == [3, 4, 5, 6, 7]  # ids never reused: append-only
    assert np.array_equal(store_windows(store.path).numpy(),
                          np.concatenate([windows(3)[2:], windows(4, seed=1)]))
    store.close()


def test_store_drops_windows_older_than_the_age_policy(tmp_path):
    clock = [1000.0]
    store = WindowStore(tmp_path / "s.db", SHAPE, Retention(max_age_s=60.0), clock=lambda: clock[0])
    store.append(_rows(2))
    clock[0] += 61.0
    assert store.append(_rows(1, seed=1)).evicted == 2
    assert store.stats().windows == 1
    store.close()


def test_size_policy_becomes_a_window_budget():
    per_window = 4 * 9 * 128 + 64
    assert Retention.from_limits(SHAPE, max_mb=1.0).max_windows == 2**20 // per_window
    assert Retention.from_limits(SHAPE, max_windows=10, max_mb=1.0).max_windows == 10
    assert Retention.from_limits(SHAPE, max_age_days=1).max_age_s == 86_400.0


def test_store_persists_its_shape_and_rounds(tmp_path):
    path = tmp_path / "s.db"
    store = WindowStore(path, SHAPE)
    store.append(_rows(2))
    store.close()
    record_round(path, 5)
    record_round(path, 3)  # a late, older round does not move it back
    assert WindowStore(path, SHAPE).stats().last_round == 5
    with pytest.raises(DataError, match=r"shape \[9, 128\]"):
        WindowStore(path, WindowShape(3, 128))
    with pytest.raises(DataError, match="at least 5 needed"):
        store_windows(path, min_windows=5)
    with pytest.raises(DataError, match="no window store"):
        store_windows(tmp_path / "missing.db")


# ---------------------------------------------------------------- crash safety


def _start_serve(store: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`unikd serve` in its own session (so os.killpg takes it and nothing else)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "serve", "--store", str(store), "--dataset", "HAR",
         "--address", "127.0.0.1:0", "--watch", "0", "--metrics-port", "0"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log.open("a"), text=True,
        start_new_session=True)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=60):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"unikd serve did not start; log:\n{log.read_text()}")
    line = proc.stdout.readline()
    assert "listening on" in line, f"{line!r}; log:\n{log.read_text()}"
    return proc, line.split("listening on ")[1].split()[0]


def test_killed_during_ingest_the_store_holds_exactly_the_acknowledged_windows(tmp_path):
    store, log = tmp_path / "store.db", tmp_path / "serve.log"
    proc, address = _start_serve(store, log)
    acked: list[np.ndarray] = []
    sent, release = threading.Event(), threading.Event()

    def unfinished_stream():
        yield from ingest_requests(windows(5, seed=99), "killed")
        sent.set()
        release.wait(30)  # the stream never half-closes: the service is killed first

    try:
        with grpc.insecure_channel(address) as channel:
            stub = edge_pb2_grpc.EdgeDeviceStub(channel)
            for k in range(3):
                x = windows(7, seed=k)
                assert stub.Ingest(iter(ingest_requests(x, f"app{k}")), timeout=30).accepted == 7
                acked.append(x)
            in_flight = stub.Ingest.future(unfinished_stream(), timeout=30)
            assert sent.wait(30)
            time.sleep(0.3)  # let the service take the windows off the wire
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            release.set()
            with pytest.raises(grpc.RpcError):
                in_flight.result(timeout=30)
    finally:
        release.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
    # After a restart on the same store: exactly the acknowledged windows, bit for bit
    proc, address = _start_serve(store, log)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = edge_pb2_grpc.EdgeDeviceStub(channel)
            status = stub.Status(edge_pb2.StatusRequest(), timeout=30)
            assert status.windows == 21
            assert {s.source: s.windows for s in status.sources} == {
                "app0": 7, "app1": 7, "app2": 7}
            assert np.array_equal(store_windows(store).numpy(), np.concatenate(acked))
            # A whole call sent, killed around its commit: all of it or none of it survives
            big = windows(300, seed=7)
            racing = stub.Ingest.future(iter(ingest_requests(big, "big")), timeout=30)
            time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            try:
                big_acked = racing.result(timeout=30).accepted == 300
            except grpc.RpcError:
                big_acked = False  # no ack; it may still have committed just before the kill
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
    stored = store_windows(store).numpy()
    assert len(stored) in (21, 321), "a call survived in part"
    assert np.array_equal(stored[:21], np.concatenate(acked))
    assert len(stored) == 321 or not big_acked, "an acknowledged call was lost"
    if len(stored) == 321:
        assert np.array_equal(stored[21:], big)


# ---------------------------------------------------------------- Prometheus metrics


def test_metrics_on_loopback_count_windows_predictions_and_the_version(tmp_path, model_path):
    from prometheus_client.parser import text_string_to_metric_families

    from shared.platform.processes import free_port

    port = free_port()
    svc = start_service(ServeOptions(store=tmp_path / "s.db", model=model_path,
                                     address="127.0.0.1:0", watch_s=0, metrics_port=port))
    try:
        with grpc.insecure_channel(svc.address) as channel:
            stub = edge_pb2_grpc.EdgeDeviceStub(channel)
            stub.Ingest(iter(ingest_requests(windows(5))))
            stub.Ingest(iter(ingest_requests(windows(2, seed=1))))
            list(stub.StreamPredict(iter(edge_pb2.PredictRequest(window=encode_window(w))
                                         for w in windows(3, seed=2))))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        values = {s.name: s.value for f in text_string_to_metric_families(text)
                  for s in f.samples}
        assert values["unikd_edge_windows_stored"] == 7
        assert values["unikd_edge_windows_ingested_total"] == 7
        assert values["unikd_edge_predictions_total"] == 3
        assert values["unikd_edge_model_generation"] == 1
        assert values["unikd_edge_model_version"] == 0  # a model file outside a model directory
        with pytest.raises(UnikdError, match=f"--metrics-port {port}: cannot listen"):
            start_service(ServeOptions(store=tmp_path / "t.db", model=model_path,
                                       address="127.0.0.1:0", watch_s=0, metrics_port=port))
    finally:
        svc.stop(0)
    with pytest.raises(OSError):  # stopped with the service
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
