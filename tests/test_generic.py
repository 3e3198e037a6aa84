"""GENERIC data (shape read from the files) through every command, on a non-HAR shape.

The folder is written by `unikd data synth` with 1 channel x 1024 samples and 9 classes, so
nothing can fall back on HAR's 9 x 128 silently. Epochs, rounds and windows are tiny: these
tests check plumbing and outputs, not accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from shared.cli.main import main
from shared.config import load_config
from shared.data.datasets import DatasetSpec, first_conv, generic_spec, get_spec

CHANNELS, LENGTH, CLASSES = 1, 1024, 9
FAST = ["--set", "teacher.epochs=1", "--set", "distill.epochs=1", "--quiet"]


def generic_set(data: Path, out: Path, scenario: str = "0->1") -> list[str]:
    return ["--set", "data.dataset=GENERIC", "--set", f"data.path={data}",
            "--set", f"data.scenario={scenario}", "--set", f"out={out}", *FAST]


def only_run(parent: Path, pattern: str) -> Path:
    found = sorted(parent.glob(f"*{pattern}"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def generic_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generic") / "data"
    rc = main(["data", "synth", str(out), "--channels", str(CHANNELS), "--length", str(LENGTH),
               "--classes", str(CLASSES), "--windows-per-class", "3", "--domains", "3"])
    assert rc == 0
    return out


# ---------------------------------------------------------------- the first-conv rule


@pytest.mark.parametrize("name", ["HAR", "HHAR", "FD", "SSC"])
def test_first_conv_rule_reproduces_the_registry(name):
    spec = get_spec(name)
    assert first_conv(spec.length) == (spec.kernel, spec.stride)


@pytest.mark.parametrize("length, expected", [
    (128, (5, 1)), (256, (7, 1)), (512, (10, 1)), (1024, (14, 2)), (2048, (20, 4)),
    (3000, (25, 6)), (5120, (32, 6)), (10_000, (45, 6)), (16, (2, 1)),
])
def test_first_conv_rule_table(length, expected):
    assert first_conv(length) == expected
    spec = generic_spec(1, length, 3)
    assert (spec.kernel, spec.stride) == expected


def test_spec_survives_the_wire_record():
    from shared.protocol.records import spec_from_record, spec_to_record

    for spec in (get_spec("SSC"), generic_spec(CHANNELS, LENGTH, CLASSES)):
        back = spec_from_record(spec_to_record(spec))
        assert back.to_dict() == spec.to_dict()
    with pytest.raises(Exception, match="kernel"):
        DatasetSpec.from_dict({**generic_spec(1, 64, 2).to_dict(), "kernel": "5"})


# ---------------------------------------------------------------- scenario syntax


def test_scenario_syntax_is_parsed_in_one_place():
    from shared.data.datasets import format_scenario, parse_scenario, parse_scenario_list
    from shared.errors import UnikdError
    from shared.data.partition import PartitionSpec, client_domains

    assert parse_scenario("2->11") == parse_scenario("2:11") == ("2", "11")
    assert parse_scenario("2->11+13+16") == parse_scenario("2->11,13,16") == ("2", "11,13,16")
    assert format_scenario(("2", "11,13,16")) == "2->11+13+16"
    assert parse_scenario_list("2:11,7->13") == [("2", "11"), ("7", "13")]
    assert parse_scenario_list("2->11+13+16;7->13+18") == [("2", "11,13,16"), ("7", "13,18")]
    assert parse_scenario_list("2->11,13,16;7->13") == [("2", "11,13,16"), ("7", "13")]
    with pytest.raises(UnikdError, match=r"join them with '\+', e.g. 2->11\+13"):
        parse_scenario_list("2->11,13,16")
    for bad in ("2->", "->11", "2->11+", "2->11->13", "211"):
        with pytest.raises(UnikdError, match="bad scenario"):
            parse_scenario(bad)
    per_domain = PartitionSpec.parse("per-domain")
    assert client_domains("11+13+16", 3, per_domain) == ["11", "13", "16"]
    assert client_domains("11+13", 2, PartitionSpec.parse("iid")) == ["11,13"] * 2  # pooled


def test_per_domain_bench_gives_each_target_its_own_edge():
    from server.bench.federated import clients_per_scenario

    assert clients_per_scenario(["2->11+13+16", "7->13"], "per-domain", None) == {
        "2->11+13+16": 3, "7->13": 1}
    assert clients_per_scenario(["2->11"], "dirichlet:0.5", None) == {"2->11": 5}
    assert clients_per_scenario(["2->11"], "iid", 3) == {"2->11": 3}
    assert clients_per_scenario(["2->11+13"], "iid", 100) == {"2->11+13": 100}  # pooled


# ---------------------------------------------------------------- batch size


def test_batch_size_comes_from_the_dataset_unless_set():
    ssc = get_spec("SSC")
    default = load_config()
    assert default.distill.batch_size == 0 and default.teacher.batch_size == 0
    assert default.distill.batch_for(ssc) == 128 and default.teacher.batch_for(ssc) == 128
    assert default.distill.batch_for(get_spec("HAR")) == 32
    chosen = load_config(overrides=["distill.batch_size=32", "teacher.batch_size=16"])
    assert chosen.distill.batch_for(ssc) == 32 and chosen.teacher.batch_for(ssc) == 16


# ---------------------------------------------------------------- data, info


def test_synth_writes_the_requested_shape(generic_dir):
    from shared.data.adatime import list_domains, load_domain

    assert list_domains(generic_dir) == ["0", "1", "2"]
    d = load_domain(generic_dir, "train", "0")
    assert d.x.shape[1:] == (CHANNELS, LENGTH) and d.x.dtype == torch.float32
    assert sorted(d.y.unique().tolist()) == list(range(CLASSES))


def test_synth_generic_shape_is_seeded(tmp_path):
    from shared.data.synth import SynthConfig, generate_domain

    cfg = SynthConfig(channels=2, length=300, classes=4, windows_per_class=5)
    a, b = generate_domain(1, "test", cfg), generate_domain(1, "test", cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape[1:] == (2, 300)
    assert SynthConfig().har_shape  # the default stays the HAR-like generator


def test_info_and_check_read_the_shape_from_the_files(generic_dir, capsys):
    assert main(["info", "--data", str(generic_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dataset"] == "GENERIC"
    assert info["input"] == {"channels": CHANNELS, "length": LENGTH, "classes": CLASSES}
    assert info["first_conv"] == {"kernel": 14, "stride": 2}
    assert main(["data", "check", str(generic_dir), "--dataset", "GENERIC"]) == 0
    assert "valid for GENERIC" in capsys.readouterr().out


def test_generic_without_a_folder_is_a_clear_error(capsys):
    assert main(["info", "--dataset", "GENERIC"]) == 2
    assert "GENERIC reads its shape from the files" in capsys.readouterr().err


# ---------------------------------------------------------------- centralized commands


@pytest.fixture(scope="module")
def distill_run(generic_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["distill", "--method", "unikd", *generic_set(generic_dir, out)]) == 0
    return only_run(out, "unikd-GENERIC-0to1")


def test_teacher_command(generic_dir, tmp_path):
    from server.central.teacher import load_teacher

    assert main(["teacher", *generic_set(generic_dir, tmp_path)]) == 0
    run = only_run(tmp_path, "teacher-GENERIC-0to1")
    for name in ("config.yaml", "teacher.pt", "metrics.csv", "results.json"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert {"trg_mf1", "src_mf1", "train_seconds", "content_hash"} <= set(results)
    teacher, _ = load_teacher(run / "teacher.pt", generic_spec(CHANNELS, LENGTH, CLASSES))
    first = teacher.members[0].block1[0]  # the default teacher: a 3-member ensemble
    assert (first.kernel_size[0], first.stride[0], first.in_channels) == (14, 2, CHANNELS)
    assert teacher(torch.zeros(2, CHANNELS, LENGTH)).shape == (2, CLASSES)


def test_distill_command_and_export(distill_run):
    results = json.loads((distill_run / "results.json").read_text())
    assert results["dataset"] == "GENERIC" and results["scenario"] == "0->1"
    assert np.isfinite(results["mf1"])
    assert main(["export", "--run", str(distill_run), "--format", "torch"]) == 0
    bundle = distill_run / "export" / "student.pt"
    assert bundle.is_file()
    parity = json.loads((distill_run / "export" / "student.pt.parity.json").read_text())
    assert parity["max_logit_diff"] <= 1e-3


def test_export_needs_no_data_files(distill_run, tmp_path):
    """The checkpoint carries the spec: a copy of the run exports with the data gone."""
    from client.edge_service.export import load_run_student

    copy = tmp_path / "run"
    shutil.copytree(distill_run, copy)
    cfg = (copy / "config.yaml").read_text().replace(str(load_config(copy / "config.yaml")
                                                         .data.path), str(tmp_path / "gone"))
    (copy / "config.yaml").write_text(cfg)
    student = load_run_student(copy)
    assert (student.spec.channels, student.spec.length, student.spec.classes) == (
        CHANNELS, LENGTH, CLASSES)


def test_serve_with_the_generic_student_and_with_a_folder(distill_run, generic_dir, tmp_path):
    from client.edge_service.server import ServeOptions, start_service
    from client.edge_service.windows import encode_window
    from protos import edge_pb2, edge_pb2_grpc

    bundle = distill_run / "export" / "student.pt"
    if not bundle.is_file():
        assert main(["export", "--run", str(distill_run), "--format", "torch"]) == 0
    svc = start_service(ServeOptions(store=tmp_path / "s.db", model=bundle,
                                     address="127.0.0.1:0", watch_s=0))
    try:
        window = np.random.default_rng(0).normal(size=(CHANNELS, LENGTH)).astype(np.float32)
        with grpc.insecure_channel(svc.address) as channel:
            reply = edge_pb2_grpc.EdgeDeviceStub(channel).Predict(
                edge_pb2.PredictRequest(window=encode_window(window), request_id="g"))
        assert len(reply.logits) == CLASSES
    finally:
        svc.stop(0)
    svc = start_service(ServeOptions(store=tmp_path / "t.db", dataset="GENERIC", data=generic_dir,
                                     address="127.0.0.1:0", watch_s=0))
    try:
        assert (svc.servicer.shape.channels, svc.servicer.shape.length) == (CHANNELS, LENGTH)
    finally:
        svc.stop(0)


# ---------------------------------------------------------------- federation


def test_federate_command(generic_dir, tmp_path):
    assert main(["federate", *generic_set(generic_dir, tmp_path), "--set", "fed.clients=2"]) == 0
    run = only_run(tmp_path, "federate-GENERIC-2clients")
    for name in ("config.yaml", "results.json", "rounds.csv", "checkpoints/final.pt"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["clients"] == 2 and results["rounds"] >= 1 and results["rejected_updates"] == 0


def test_edge_nodes_build_their_models_from_the_round_alone(generic_dir, tmp_path, monkeypatch):
    """Deployed-style nodes (own folders, node config `data-path`) with an empty registry:
    the shapes come only from the round's `spec` record; the cloud holds only the source."""
    from server.fed.harness import InProcessGrid, load_component
    from server.fed.rounds import federate
    from shared.protocol import wire

    cloud = tmp_path / "cloud"
    cloud.mkdir()
    for split in ("train", "test"):
        shutil.copy(generic_dir / f"{split}_0.pt", cloud)
    devices = []
    for d in ("1", "2"):
        dev = tmp_path / f"edge{d}"
        dev.mkdir()
        for split in ("train", "test"):
            shutil.copy(generic_dir / f"{split}_{d}.pt", dev)
        devices.append((dev, d))
    monkeypatch.setattr("shared.data.datasets.REGISTRY", {})  # get_spec fails for every name
    specs = []

    def tap(request, reply):
        specs.append(dict(request.content[wire.SPEC]))
        assert not reply.has_error(), reply.error.reason

    cfg = load_config(overrides=["data.dataset=GENERIC", f"data.path={cloud}",
                                 "data.scenario=0->1", "teacher.epochs=1", "distill.epochs=1",
                                 "fed.clients=2"])
    grid = InProcessGrid(load_component("client.node.client_app:app"), 2, tap=tap,
                         node_config=lambda i: {"partition-id": i, "data-path": str(
                             devices[i][0]), "domain": devices[i][1]})
    result = federate(grid, cfg, progress=False)
    assert len(result.rounds) >= 1 and result.rejected == []
    assert specs and all(s["length"] == LENGTH and s["kernel"] == 14 and s["stride"] == 2
                         and s["classes"] == CLASSES for s in specs)


def test_edge_command_accepts_a_generic_folder(generic_dir, tmp_path, capsys):
    dev = tmp_path / "edge"
    dev.mkdir()
    shutil.copy(generic_dir / "train_1.pt", dev)
    assert main(["edge", "--superlink", "127.0.0.1:9092", "--data", str(dev), "--insecure",
                 "--allow-unsigned-apps", "--dry-run"]) == 0
    assert 'domain="1"' in capsys.readouterr().out


# ---------------------------------------------------------------- benchmarks


def test_bench_central_generic(generic_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "central", "--dataset", "GENERIC", "--data", str(generic_dir),
               "--scenarios", "0->1", "--seeds", "0", "--methods", "unikd", "--out", str(out),
               *FAST])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    assert report["dataset"] == "GENERIC"
    assert report["compression"]["input"] == {"channels": CHANNELS, "length": LENGTH,
                                              "classes": CLASSES}
    (run,) = report["runs"]
    assert {"method", "scenario", "seed", "mf1", "acc", "src_mf1", "train_seconds",
            "peak_rss_mb"} <= set(run)
    assert (run["method"], run["scenario"], run["seed"]) == ("unikd", "0->1", 0)
    assert [t["scenario"] for t in report["teachers"]] == ["0->1"]
    assert {p.name for p in (out / "teachers").iterdir()} == {"0to1_seed0.pt", "0to1_seed0.json"}
    md = (out / "results.md").read_text()
    assert "| unikd |" in md and "| teacher (DANN) |" in md
    assert "| – |" in md  # no main-5 scenario in the list: a dash, not a crash


def test_bench_federated_per_domain(generic_dir, tmp_path):
    out = tmp_path / "bench"
    rc = main(["bench", "federated", "--dataset", "GENERIC", "--data", str(generic_dir),
               "--scenarios", "0->1+2", "--partition", "per-domain", "--seeds", "0",
               "--out", str(out), *FAST])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    (run,) = report["runs"]
    assert run["scenario"] == "0->1+2" and run["clients"] == 2
    assert run["partition"] == "per-domain" and run["rounds"] >= 1
    assert run["bytes_up"] > 0 and run["bytes_down"] > 0 and run["rejected"] == 0
    assert "| fedunikd |" in (out / "results.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["central", "--dataset", "GENERIC"], "give --scenarios"),
    (["central", "--dataset", "GENERIC", "--scenarios", "0->1,2"], "0->1+2"),
    (["central", "--dataset", "GENERIC", "--scenarios", "0->1+2"], "one target domain"),
    (["federated", "--dataset", "GENERIC", "--scenarios", "0->1+2", "--partition",
      "per-domain", "--clients", "3"], "has 2 target domain"),
    (["federated", "--dataset", "GENERIC", "--scenarios", "0->1+1"], "more than once"),
])
def test_bench_argument_errors(generic_dir, tmp_path, capsys, argv, message):
    rc = main(["bench", *argv, "--data", str(generic_dir), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_markdown_report_without_main_scenarios():
    from server.bench.central import markdown_report

    runs = [{"method": "unikd", "scenario": "1->2", "seed": s, "mf1": 50.0 + s,
             "train_seconds": 1.0} for s in (0, 1)]
    teachers = [{"scenario": "1->2", "seed": 0, "mf1": 60.0, "train_seconds": 2.0}]
    report = {"runs": runs, "teachers": teachers, "wall_seconds": 60.0,
              "compression": {"teacher": {"params": 10, "macs": 1e6},
                              "student": {"params": 1, "macs": 1e5},
                              "compression": {"params": 10, "macs": 10}}}
    md = markdown_report(report, get_spec("HAR"))
    assert "| unikd | 50.50 ± 0.71 | 50.50 | – | 1.0 |" in md


def test_a_node_whose_windows_do_not_fit_the_round_says_so(generic_dir):
    from client.node.local_data import LocalData, check_shape
    from shared.errors import UnikdError

    spec = generic_spec(CHANNELS, LENGTH, CLASSES)
    fits = LocalData(torch.zeros(4, CHANNELS, LENGTH), None)
    assert check_shape(fits, spec, {}) is fits
    with pytest.raises(UnikdError, match=r"/dev/edge: this node's windows are 9 channels x 128 "
                                         r"samples; the round's model \(GENERIC\) takes 1 x 1024"):
        check_shape(LocalData(torch.zeros(4, 9, 128), None), spec, {"data-path": "/dev/edge"})
