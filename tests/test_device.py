"""The `device` key (issue 27, item 5): where the cloud and the simulated clients compute.

On this CPU-only machine `auto` is the CPU, and a run with `device: cpu` must give the default
run's numbers to the bit. The CUDA tests at the end run the same short runs on a GPU and check
that they finish with a finite MF1 and that the cloud's models live there; without a CUDA
device they are skipped, never faked.
"""

from __future__ import annotations

import json
import math
import typing
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from client.node.node_config import DEVICE_KEY, NodeConfig
from client.node.supernode import EdgeConfig, check_compute, node_config
from server.central.runner import run_distill
from server.central.teacher import train_teacher
from server.central.trainer import distill_unikd, score_student
from server.fed.harness import FIRST_NODE, InProcessGrid, load_component
from server.fed.rounds import federate
from server.fed.run import run_federate
from shared.cli.main import main
from shared.config import RunConfig, load_config
from shared.config.schema import HASH_EXEMPT
from shared.data.scenario import load_scenario
from shared.errors import ConfigError, UnikdError
from shared.protocol.records import student_state
from shared.unikd.compute import CPU, describe, on, resolve_device, to_cpu
from shared.unikd.devices import DEVICE_NAMES

CLIENT_APP = "client.node.client_app:app"
# short runs: one DANN member, two epochs, the default recipe otherwise (EMA on, both mode)
SHORT = ["distill.epochs=2", "teacher.epochs=1", "teacher.ensemble=1", "seed=5"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def fake_cuda(monkeypatch) -> None:
    """torch says CUDA is there (resolve_device only asks); cuDNN's flags are put back after."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for flag in ("deterministic", "benchmark"):
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))


# ---------------------------------------------------------------- the config key


def test_device_is_a_top_level_key_with_the_three_choices():
    hints = typing.get_type_hints(RunConfig)
    assert typing.get_args(hints["device"]) == DEVICE_NAMES == ("auto", "cpu", "cuda")
    assert RunConfig().device == "auto"
    assert load_config(overrides=["device=cpu"]).device == "cpu"


def test_a_bad_device_in_a_file_names_the_key_and_the_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("device: gpu\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert err.value.key == "device" and str(f) in str(err.value)
    assert "'auto', 'cpu', 'cuda'" in str(err.value)


def test_a_bad_device_from_set_names_set():
    with pytest.raises(ConfigError, match=r"config key 'device' in --set"):
        load_config(overrides=["device=tpu"])


def test_device_is_not_part_of_the_config_hash():
    """Where a run computes is not what it computes: a CPU run may resume on a GPU, and a
    teacher cached by hash serves both (results.json records the resolved device)."""
    assert ("", "device") in HASH_EXEMPT
    hashes = {load_config(overrides=[f"device={d}"]).hash() for d in DEVICE_NAMES}
    assert len(hashes) == 1
    assert load_config(overrides=["device=cpu", "seed=1"]).hash() not in hashes


# ---------------------------------------------------------------- resolving it


@pytest.mark.parametrize("name, available, expected", [
    ("auto", False, "cpu"), ("auto", True, "cuda"), ("cpu", False, "cpu"), ("cpu", True, "cpu"),
    ("cuda", True, "cuda")])
def test_resolve_device(monkeypatch, name, available, expected):
    fake_cuda(monkeypatch) if available else no_cuda(monkeypatch)
    assert resolve_device(name) == torch.device(expected)


def test_resolving_to_cuda_selects_deterministic_cudnn(monkeypatch):
    fake_cuda(monkeypatch)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    resolve_device("auto")
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_cuda_without_cuda_is_an_error_naming_the_key_and_the_file(monkeypatch):
    no_cuda(monkeypatch)
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda", "configs/gpu.yaml")
    assert err.value.key == "device"
    assert "config key 'device' in configs/gpu.yaml" in str(err.value)
    assert "no usable CUDA device" in str(err.value)


def test_describe_says_what_the_value_resolved_to(monkeypatch):
    no_cuda(monkeypatch)
    assert describe("auto") == "cpu (auto)" and describe("cpu") == "cpu"
    fake_cuda(monkeypatch)
    assert describe("auto") == "cuda (auto)" and describe("cuda") == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_auto_is_the_cpu_on_this_machine():
    assert resolve_device("auto") == CPU


def test_moving_to_where_a_tensor_is_copies_nothing():
    t = torch.arange(4.0)
    assert on(CPU, t) is t
    tree = {"a": OrderedDict(w=t), "b": [t, (t, 1)], "c": "text"}
    assert to_cpu(tree) is tree  # a CPU run writes exactly what it wrote before


# ---------------------------------------------------------------- refused before training


def test_cuda_without_cuda_stops_the_cli_before_any_training(tmp_path, monkeypatch, capsys):
    no_cuda(monkeypatch)
    f = tmp_path / "gpu.yaml"
    f.write_text(f"device: cuda\nout: {tmp_path / 'runs'}\n")
    for command in ("teacher", "distill", "federate"):
        assert main([command, "--config", str(f), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"config key 'device' in {f}" in err and "no usable CUDA device" in err, err
    assert main(["distill", "--set", "device=cuda", "--set", f"out={tmp_path / 'runs'}",
                 "--quiet"]) == 2
    assert "config key 'device' in --set" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # no run folder, nothing trained


def test_cuda_without_cuda_stops_the_runners_before_any_folder_or_message(tmp_path,
                                                                           monkeypatch):
    no_cuda(monkeypatch)
    cfg = load_config(overrides=[*SHORT, "device=cuda", f"out={tmp_path / 'runs'}"])
    for run in (lambda: run_distill(cfg, "unikd", progress=False),
                lambda: run_federate(cfg, progress=False)):
        with pytest.raises(ConfigError, match="config key 'device'"):
            run()
    assert not (tmp_path / "runs").exists()
    seen = []
    grid = InProcessGrid(load_component(CLIENT_APP), 1, tap=lambda q, r: seen.append(q))
    with pytest.raises(ConfigError, match="config key 'device'"):
        federate(grid, cfg, progress=False)
    assert seen == []  # not even the count query went out


# ---------------------------------------------------------------- the nodes' own device


def test_a_node_reads_its_own_device_from_its_node_config():
    assert NodeConfig.from_node_config({}).device == "cpu"  # a deployed edge: its CPU
    assert NodeConfig.from_node_config({DEVICE_KEY: "cuda"}).device == "cuda"
    with pytest.raises(UnikdError, match="node config device='gpu'"):
        NodeConfig.from_node_config({DEVICE_KEY: "gpu"})


def test_the_edge_command_writes_the_device_only_when_the_operator_chose_one(tmp_path):
    from flwr.common.config import parse_config_args

    cfg = EdgeConfig("cloud:8000", tmp_path / "data", insecure=True, allow_unsigned=True)
    assert "device" not in node_config(cfg, "2")  # the default: the same argument as before
    cfg.device = "auto"
    parsed = NodeConfig.from_node_config(parse_config_args([node_config(cfg, "2")]))
    assert parsed.device == "auto"


def test_an_edge_asking_for_cuda_without_cuda_is_refused_at_start(monkeypatch):
    no_cuda(monkeypatch)
    with pytest.raises(UnikdError, match="--device cuda: .*no usable CUDA device"):
        check_compute("cuda")
    check_compute("cpu")
    check_compute("auto")


def test_a_simulated_node_configured_for_cuda_without_cuda_names_the_key(monkeypatch):
    from flwr.app import Context, RecordDict

    from client.node.client_app import node_device

    no_cuda(monkeypatch)
    ctx = Context(run_id=1, node_id=FIRST_NODE, state=RecordDict(), run_config={},
                  node_config={"partition-id": 3, DEVICE_KEY: "cuda"})
    with pytest.raises(UnikdError, match="client 3: node config device=cuda: .*CUDA"):
        node_device(ctx)


# ---------------------------------------------------------------- cpu equals the default


@pytest.fixture(scope="module")
def short_data():
    cfg = load_config(overrides=SHORT)
    return load_scenario(cfg.data)


def central_run(data, *sets: str):
    cfg = load_config(overrides=[*SHORT, *sets])
    teacher = train_teacher(cfg, data, progress=False)
    losses = []
    result = distill_unikd(cfg, data, teacher, progress=False,
                           step_hook=lambda g, s, t: losses.append((s, t)))
    return teacher, result, losses


def test_a_central_run_on_cpu_equals_the_default_run(short_data):
    t_default, default, losses_default = central_run(short_data)
    t_cpu, cpu, losses_cpu = central_run(short_data, "device=cpu")
    for (k, a), b in zip(t_default.state_dict().items(), t_cpu.state_dict().values()):
        assert torch.equal(a, b), f"teacher {k}"
    assert losses_cpu == losses_default and len(losses_cpu) > 10  # every step, to the bit
    for (k, a), b in zip(default.student.state_dict().items(), cpu.student.state_dict().values()):
        assert torch.equal(a, b), k
    assert score_student(cpu.student, short_data) == score_student(default.student, short_data)


def federated_run(*sets: str):
    cfg = load_config(overrides=[*SHORT, "fed.clients=1", *sets])
    rows = []
    grid = InProcessGrid(load_component(CLIENT_APP), cfg.fed.clients)
    fed = federate(grid, cfg, progress=False, on_round=lambda r, c, row: rows.append(row))
    return fed, rows, grid


def test_a_one_client_federation_on_cpu_equals_the_default_run():
    default, rows_default, _ = federated_run()
    cpu, rows_cpu, grid = federated_run("device=cpu")
    assert grid.node_config_of(FIRST_NODE)[DEVICE_KEY] == "cpu"  # the run's device, resolved
    assert [e["mf1"] for e in cpu.evals] == [e["mf1"] for e in default.evals]
    drop = ("seconds",)  # wall time is the only column allowed to differ
    assert ([{k: v for k, v in r.items() if k not in drop} for r in rows_cpu]
            == [{k: v for k, v in r.items() if k not in drop} for r in rows_default])
    for (k, a), b in zip(default.cloud.nets.state_dict().items(),
                         cpu.cloud.nets.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(student_state(default.cloud.reported_nets()).items(),
                         student_state(cpu.cloud.reported_nets()).values()):
        assert torch.equal(a, b), f"EMA {k}"


def test_the_run_folder_states_the_resolved_device(tmp_path):
    cfg = load_config(overrides=[*SHORT, "distill.epochs=1", f"out={tmp_path}"])
    run_dir = run_distill(cfg, "unikd", progress=False)
    assert json.loads((run_dir / "results.json").read_text())["device"] == describe("auto")
    assert "device: auto" in (run_dir / "config.yaml").read_text()  # the user's value, kept


# ---------------------------------------------------------------- on a GPU (skipped without)


def on_cuda(module: torch.nn.Module) -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return bool(tensors) and all(t.is_cuda for t in tensors)


@cuda
def test_a_central_run_on_cuda_finishes_with_a_finite_mf1(tmp_path, short_data):
    teacher, result, losses = central_run(short_data, "device=cuda")
    assert on_cuda(teacher) and on_cuda(result.student) and on_cuda(result.extras["d_f"])
    assert all(math.isfinite(s["loss"]) and math.isfinite(t["loss"]) for s, t in losses)
    assert math.isfinite(score_student(result.student, short_data)["mf1"])
    cfg = load_config(overrides=[*SHORT, "distill.epochs=1", "device=cuda", f"out={tmp_path}"])
    run_dir = run_distill(cfg, "unikd", progress=False)  # what goes to disk is on the CPU
    results = json.loads((run_dir / "results.json").read_text())
    assert results["device"] == "cuda" and math.isfinite(results["mf1"])
    saved = torch.load(run_dir / "student.pt", weights_only=True)
    assert all(not t.is_cuda for t in saved["state_dict"].values())


@cuda
def test_the_baselines_run_on_cuda(short_data):
    from server.central.baselines import BASELINES

    cfg = load_config(overrides=[*SHORT, "distill.epochs=1", "device=cuda"])
    teacher = train_teacher(cfg, short_data, progress=False)
    for name, method in BASELINES.items():
        result = method(cfg, short_data, teacher, False)
        assert on_cuda(result.student), name
        assert math.isfinite(score_student(result.student, short_data)["mf1"]), name


# the K=1 run above, then the paths a GPU run takes beside it: local paths of 2 steps with the
# pseudo-label term's views, record DP's per-window gradients, local DP with a source-only
# teacher, the teacher kept in the cloud with its prototypes
CUDA_FEDERATIONS = [
    [],
    ["fed.clients=2", "fed.local_steps=2", "distill.pl_weight=1.0", "distill.pl_threshold=0.5"],
    ["fed.clients=2", "fed.dp=record", "fed.dp_epsilon=50", "distill.pl_weight=1.0"],
    ["fed.clients=2", "fed.dp=local", "fed.teacher_placement=source-only"],
    ["fed.clients=2", "fed.teacher_placement=cloud", "fed.cloud_hint=prototypes"],
]


@cuda
@pytest.mark.parametrize("sets", CUDA_FEDERATIONS)
def test_a_federation_on_cuda_finishes_with_a_finite_mf1(tmp_path, sets):
    fed, rows, grid = federated_run("device=cuda", *sets)
    cloud = fed.cloud
    assert on_cuda(cloud.nets) and on_cuda(cloud.teacher)
    assert cloud.ema is None or on_cuda(cloud.ema.average.module)
    assert grid.node_config_of(FIRST_NODE)[DEVICE_KEY] == "cuda"  # the simulated clients too
    assert rows and fed.evals and math.isfinite(fed.final["mf1"])
    assert all(math.isfinite(r["src_loss"]) for r in rows)


@cuda
def test_a_federated_run_folder_on_cuda_holds_cpu_tensors(tmp_path):
    cfg = load_config(overrides=[*SHORT, "distill.epochs=1", "fed.clients=2", "device=cuda",
                                 f"out={tmp_path}"])
    run_dir = run_federate(cfg, progress=False)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["device"] == "cuda" and math.isfinite(results["mf1"])
    final = torch.load(Path(run_dir) / "checkpoints" / "final.pt", weights_only=True)
    assert all(not t.is_cuda for t in final["student"].values())
