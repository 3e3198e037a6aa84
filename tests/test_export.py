"""`unikd export` / `unikd edge-pull`: run folders to edge bundles and ONNX (fp32, int8), the
parity check, and the service answering with what was exported."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import torch

from client.edge_service import export as export_mod
from client.edge_service.models import TorchPredictor, load_predictor
from client.edge_service.server import ServeOptions, start_service
from client.edge_service.store import NewWindow, WindowStore
from client.edge_service.windows import WindowShape, encode_window
from client.edge_service.export import export_student, load_run_student
from protos import edge_pb2, edge_pb2_grpc
from shared.protocol import checkpoints
from shared.cli.main import main as unikd
from shared.config import load_config
from shared.data.loaders import Normalizer
from shared.data.datasets import get_spec
from shared.errors import UnikdError
from shared.unikd.models import student_for

HAR = get_spec("HAR")


def _write_domain(folder: Path, split: str, domain: str, seed: int, n: int = 40) -> None:
    gen = torch.Generator().manual_seed(seed)
    # Channels on different scales and offsets, as raw sensors are: normalisation matters.
    scale = torch.linspace(0.5, 5.0, HAR.channels)[None, :, None]
    x = torch.randn(n, HAR.channels, HAR.length, generator=gen) * scale + 3.0
    torch.save({"samples": x, "labels": torch.arange(n) % HAR.classes},
               folder / f"{split}_{domain}.pt")


def _config(run_dir: Path, data: Path) -> None:
    load_config(None, ["data.dataset=HAR", f"data.path={data}", "data.scenario=0->1"]).dump(
        run_dir / "config.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("har-like")
    for i, (split, domain) in enumerate([(s, d) for d in "01" for s in ("train", "test")]):
        _write_domain(folder, split, domain, seed=i)
    return folder


@pytest.fixture(scope="module")
def central_run(tmp_path_factory, data_dir) -> Path:
    """A run folder as `unikd distill` writes it: config.yaml and student.pt."""
    run = tmp_path_factory.mktemp("runs") / "20260101-000000-unikd-HAR-0to1"
    run.mkdir()
    _config(run, data_dir)
    torch.manual_seed(0)
    student = student_for(HAR)
    checkpoints.save(run / "student.pt", checkpoints.CENTRAL_STUDENT, {
        "state_dict": student.state_dict(),
        "meta": {"dataset": "HAR", "scenario": "0->1", "method": "unikd", "seed": 0,
                 "config_hash": "abc"}})
    return run


@pytest.fixture(scope="module")
def federated_run(tmp_path_factory, data_dir) -> Path:
    """A federated run folder: checkpoints/final.pt with student. and adapter. keys."""
    run = tmp_path_factory.mktemp("runs") / "20260101-000001-fed"
    (run / "checkpoints").mkdir(parents=True)
    _config(run, data_dir)
    torch.manual_seed(1)
    state = {f"student.{k}": v for k, v in student_for(HAR).state_dict().items()}
    state["adapter.proj.weight"] = torch.zeros(128, 32)  # dropped by the export
    checkpoints.save(run / "checkpoints" / "final.pt", checkpoints.FED_FINAL,
                     {"student": state, "round": 7, "config_hash": "def"})
    return run


@pytest.fixture(scope="module")
def onnx_export(central_run):
    return export_student(central_run, "onnx")


def test_onnx_export_matches_pytorch_and_records_its_parity(onnx_export, central_run):
    result = onnx_export
    assert result.path == central_run / "export" / "student.onnx" and result.format == "onnx"
    assert result.parity["max_logit_diff"] < 1e-4 and result.parity["agreement"] == 1.0
    assert result.parity["mf1_change"] == 0.0 and result.parity["windows"] == 40
    assert (central_run / "export" / "student.onnx.parity.json").is_file()
    meta = load_predictor(result.path).meta
    assert (meta.dataset, meta.scenario, meta.method, meta.round) == ("HAR", "0->1", "unikd", -1)
    assert meta.class_names == HAR.class_names and meta.version == central_run.name
    assert not list((central_run / "export").glob(".*candidate*"))


def test_the_service_serves_the_onnx_model(onnx_export, central_run, tmp_path):
    torch_bundle = export_student(central_run, "torch", out=tmp_path / "student.pt").path
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 9, 128)).astype(np.float32)
    svc = start_service(ServeOptions(store=tmp_path / "s.db", model=onnx_export.path,
                                     address="127.0.0.1:0", watch_s=0))
    try:
        with grpc.insecure_channel(svc.address) as channel:
            stub = edge_pb2_grpc.EdgeDeviceStub(channel)
            replies = list(stub.StreamPredict(iter(edge_pb2.PredictRequest(
                window=encode_window(w)) for w in x)))
            status = stub.Status(edge_pb2.StatusRequest())
    finally:
        svc.stop(0)
    assert status.model.format == "onnx"
    np.testing.assert_allclose([list(r.logits) for r in replies],
                               TorchPredictor(torch_bundle).logits(x), rtol=1e-4, atol=1e-4)


def test_int8_export_is_calibrated_on_a_local_store(onnx_export, central_run, data_dir, tmp_path):
    # Prepare: the device's store holds its target windows
    store = WindowStore(tmp_path / "store.db", WindowShape(9, 128))
    x_local = torch.load(data_dir / "train_1.pt", weights_only=True)["samples"].numpy()
    store.append([NewWindow("acc", w) for w in x_local])
    store.close()
    # Execute
    result = export_student(central_run, "onnx", int8=True, calib=tmp_path / "store.db")
    # Assert: int8 ops in the graph, the first conv and the head left fp32, a parity report
    graph = onnx.load(result.path).graph
    ops = [n.op_type for n in graph.node]
    assert result.format == "onnx-int8" and ops.count("DequantizeLinear") >= 4
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    assert not any(n.output[0] == first_conv.input[1] for n in graph.node
                   if n.op_type == "DequantizeLinear")
    assert result.bytes < onnx_export.bytes
    assert result.parity["agreement"] >= 0.9 and "mf1_change" in result.parity


def test_normalisation_is_baked_into_the_model(central_run, data_dir):
    student = load_run_student(central_run)
    raw = torch.load(data_dir / "train_0.pt", weights_only=True)["samples"]
    expected = Normalizer.fit(raw)
    torch.testing.assert_close(student.model.mean.flatten(), expected.mean)
    torch.testing.assert_close(student.model.std.flatten(), expected.std)


def test_a_federated_checkpoint_exports_its_student_and_round(federated_run, tmp_path):
    result = export_student(federated_run, "torch", out=tmp_path / "fed.pt")
    meta = load_predictor(result.path).meta
    assert (meta.round, meta.method, meta.format) == (7, "fedunikd", "torch")
    assert meta.version == f"{federated_run.name}@round7"
    assert result.parity["max_logit_diff"] == 0.0


def test_a_failed_parity_check_writes_nothing(central_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "FP32_TOLERANCE", -1.0)
    out = tmp_path / "never.pt"
    with pytest.raises(UnikdError, match="nothing was written"):
        export_student(central_run, "torch", out=out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (dict(fmt="torch", int8=True), "--int8 applies to --format onnx"),
    (dict(fmt="tflite"), "unknown format 'tflite'"),
    (dict(fmt="onnx", out=Path("model.pt")), "must end in .onnx"),
])
def test_bad_export_requests_are_named(central_run, args, message):
    with pytest.raises(UnikdError, match=message):
        export_student(central_run, **args)


def test_a_folder_without_a_student_is_named(tmp_path):
    with pytest.raises(UnikdError, match="no student.pt"):
        load_run_student(tmp_path)


def test_cli_export_then_edge_pull_hot_swaps_a_running_service(central_run, federated_run,
                                                                tmp_path, capsys):
    model = tmp_path / "device" / "student.pt"
    assert unikd(["export", "--run", str(central_run), "--format", "torch",
                  "--out", str(model)]) == 0
    assert "max logit diff 0.00e+00" in capsys.readouterr().out
    svc = start_service(ServeOptions(store=tmp_path / "s.db", model=model,
                                     address="127.0.0.1:0", watch_s=0))
    try:
        assert unikd(["edge-pull", "--run", str(federated_run), "--model", str(model),
                      "--address", svc.address]) == 0
        assert "generation 2" in capsys.readouterr().out
        assert svc.servicer.slot.current().predictor.meta.round == 7
        assert unikd(["edge-status", "--address", svc.address]) == 0
        assert '"round": "7"' in capsys.readouterr().out
    finally:
        svc.stop(0)
