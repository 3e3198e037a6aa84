"""The device loop, in process: nodes train on the window stores `unikd serve` fills, the final
student is delivered and installed as a numbered version of the service's model directory,
rollback restores the previous version, a node that missed the delivery gets it at its next
contact, bad stores are errors naming the store, round and client, and a restarted node is sent
the teacher snapshot again. (tests/test_device_e2e.py does the same with real processes.)"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import grpc
import numpy as np
import pytest

from client.edge_service import versions
from client.edge_service.delivery import install_delivered, installed_tag
from client.edge_service.server import ServeOptions, start_service
from client.edge_service.store import NewWindow, WindowStore, store_windows
from client.edge_service.windows import WindowShape, encode_window
from protos import edge_pb2, edge_pb2_grpc
from server.fed.delivery import load_latest
from server.fed.harness import FaultPlan, InProcessGrid, load_component
from server.fed.rounds import federate
from shared.cli.main import main as unikd
from shared.config import load_config
from shared.data.loaders import Normalizer
from shared.data.datasets import get_spec
from shared.unikd.engine import UniKDNets
from shared.protocol import wire
from shared.protocol.records import student_state

SPEC = get_spec("SYNTH")
SHAPE = WindowShape(SPEC.channels, SPEC.length)
BASE = ["fed.clients=2", "fed.rounds=2", "distill.epochs=1", "teacher.epochs=1",
        "teacher.batch_size=128"]


def fill_store(path: Path, n: int, seed: int, shape: WindowShape = SHAPE) -> Path:
    store = WindowStore(path, shape)
    rng = np.random.default_rng(seed)
    store.append([NewWindow("imu", rng.standard_normal((shape.channels, shape.length))
                            .astype(np.float32)) for _ in range(n)])
    store.close()
    return path


def random_student(seed: int) -> dict:
    import torch

    torch.manual_seed(seed)
    return student_state(UniKDNets.for_spec(SPEC))


def device_grid(tmp: Path, counts: list[int], tap=None, faults=None,
                model_dirs: bool = True) -> InProcessGrid:
    def node_config(i: int) -> dict:
        conf = {"partition-id": i, "store-path": str(tmp / f"store-{i}.db")}
        return {**conf, "model-dir": str(tmp / f"models-{i}")} if model_dirs else conf

    for i, n in enumerate(counts):
        if not (tmp / f"store-{i}.db").exists():
            fill_store(tmp / f"store-{i}.db", n, seed=i)
        versions.write_service_shape(tmp / f"models-{i}", SHAPE)
    return InProcessGrid(load_component("client.node.client_app:app"), len(counts),
                         node_config=node_config, tap=tap, faults=faults)


# ---------------------------------------------------------------- the model directory


def test_versions_install_atomically_keep_the_previous_and_roll_back(tmp_path):
    folder = tmp_path / "models"
    versions.write_service_shape(folder, SHAPE)
    norm = Normalizer.identity(SPEC.channels)
    with pytest.raises(versions.VersionError, match="no version in service"):
        versions.rollback(folder)
    one = install_delivered(folder, random_student(0), norm, SPEC, 3, "aaaa", "run-a")
    assert (one.version, one.new) == (1, True) and versions.current_version(folder) == 1
    again = install_delivered(folder, random_student(0), norm, SPEC, 3, "aaaa", "run-a")
    assert (again.version, again.new) == (1, False)  # the same delivery twice: nothing new
    two = install_delivered(folder, random_student(1), norm, SPEC, 5, "bbbb", "run-b")
    assert two.version == 2 and versions.versions(folder) == [1, 2]
    assert (folder / "current.pt").resolve() == two.path and installed_tag(folder) == "bbbb"
    assert wire.tag_number("bbbb") != wire.tag_number("pull-1") > 0 == wire.tag_number("")
    assert versions.rollback(folder) == (2, 1)
    assert versions.current_version(folder) == 1 and (folder / "v0002.pt").is_file()
    assert installed_tag(folder) == "bbbb"  # received: a rollback is not a missed delivery
    with pytest.raises(versions.VersionError, match="oldest"):
        versions.rollback(folder)
    three = install_delivered(folder, random_student(2), norm, SPEC, 7, "cccc")
    assert three.version == 3  # numbers are never reused
    wrong = tmp_path / "wrong"
    versions.write_service_shape(wrong, WindowShape(3, 128))
    with pytest.raises(versions.VersionError, match=r"takes windows of shape \[3, 128\]"):
        install_delivered(wrong, random_student(0), norm, SPEC, 1, "dddd")
    assert versions.versions(wrong) == [] and not (wrong / "current.pt").exists()


# ---------------------------------------------------------------- train on the store, deliver


@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device")
    queries: dict[int, int] = {}

    def tap(request, reply):
        mtype = request.metadata.message_type
        if mtype == "query" and not reply.has_error():
            m = reply.content[wire.METRICS]
            queries[int(m["client-id"])] = int(m["num-examples"])
        if mtype == wire.DELIVER:  # the delivery's reply: three integers, nothing else
            assert set(request.content.keys()) == set(wire.DELIVER_RECORDS)
            assert list(reply.content.keys()) == [wire.METRICS]
            m = reply.content[wire.METRICS]
            assert set(m.keys()) == {"client-id", "round", "model-version"}
            assert all(type(v) is int for v in m.values())
            queries[f"deliver-{m['client-id']}"] = m["model-version"]

    cfg = load_config(overrides=[*BASE, "fed.teacher_placement=edge"])
    grid = device_grid(tmp, [23, 31], tap=tap)
    result = federate(grid, cfg, progress=False, delivery_dir=tmp / "deliveries")
    return tmp, result, queries


def test_nodes_train_on_exactly_the_stored_windows(store_run):
    tmp, result, queries = store_run
    counts = {k: v for k, v in queries.items() if isinstance(k, int)}
    assert counts == {0: 23, 1: 31}  # what each store held, nothing else
    assert queries["deliver-0"] == queries["deliver-1"] == 1
    assert [r["clients"] for r in result.rounds] == [2, 2] and result.rejected == []
    for i in range(2):
        assert len(store_windows(tmp / f"store-{i}.db")) == counts[i]


def test_final_student_is_installed_and_served_with_its_version(store_run):
    tmp, result, _ = store_run
    assert result.delivered == {0: 1, 1: 1}
    tag = versions.history(tmp / "models-0")["1"]["tag"]
    assert tag == installed_tag(tmp / "models-1")  # both got the same student
    service = start_service(ServeOptions(store=tmp / "store-0.db", model_dir=tmp / "models-0",
                                         address="127.0.0.1:0", watch_s=0))
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = edge_pb2_grpc.EdgeDeviceStub(channel)
            status = stub.Status(edge_pb2.StatusRequest(), timeout=10)
            assert status.model.installed_version == 1 and status.model.round == 2
            assert status.last_round == 2 and status.windows == 23  # record_round ran
            x = np.zeros((SPEC.channels, SPEC.length), np.float32)
            reply = stub.Predict(edge_pb2.PredictRequest(window=encode_window(x)), timeout=10)
            assert reply.model_generation == 1 and len(reply.logits) == SPEC.classes
    finally:
        service.stop(0)


def test_a_missed_delivery_arrives_at_the_next_contact(tmp_path, caplog):
    drop = FaultPlan(dropout=1.0, seed=0, message_types=(wire.DELIVER,))  # both miss the end
    cfg = load_config(overrides=[*BASE, "fed.rounds=1", "fed.teacher_placement=cloud"])
    first = federate(device_grid(tmp_path, [20, 20], faults=drop), cfg, progress=False,
                     delivery_dir=tmp_path / "deliveries")
    assert first.delivered == {} and versions.versions(tmp_path / "models-0") == []
    latest_tag = load_latest(tmp_path / "deliveries").tag  # the cloud kept it for them
    seen = []
    cfg2 = load_config(overrides=[*BASE, "fed.rounds=1", "fed.teacher_placement=cloud", "seed=1"])
    with caplog.at_level(logging.INFO):
        second = federate(device_grid(tmp_path, [20, 20], tap=lambda q, r: seen.append(
            q.metadata.message_type)), cfg2, progress=False, delivery_dir=tmp_path / "deliveries")
    assert seen.index(wire.DELIVER) < seen.index("train")  # before any training
    assert any("missed the last delivery" in r.getMessage() for r in caplog.records)
    for i in range(2):
        past = versions.history(tmp_path / f"models-{i}")
        assert past["1"]["tag"] == latest_tag  # run 1's student, at run 2's first contact
        assert versions.current_version(tmp_path / f"models-{i}") == 2  # then run 2's
    assert second.delivered == {0: 2, 1: 2}


# ---------------------------------------------------------------- bad stores, bad model dirs


def test_bad_stores_are_errors_naming_store_round_and_client(tmp_path, caplog):
    fill_store(tmp_path / "store-0.db", 30, seed=0)  # the good node
    WindowStore(tmp_path / "store-1.db", SHAPE).close()  # empty
    (tmp_path / "store-2.db").write_bytes(b"this is not a database" * 100)  # corrupt
    fill_store(tmp_path / "store-3.db", 5, seed=3, shape=WindowShape(3, 128))  # wrong shape
    fill_store(tmp_path / "store-4.db", 5, seed=4)
    db = sqlite3.connect(tmp_path / "store-4.db")  # a NaN slipped in behind the service
    bad = np.ones((SPEC.channels, SPEC.length), "<f4")
    bad[2, 7] = np.nan
    db.execute("UPDATE windows SET data = ? WHERE id = 3", (bad.tobytes(),))
    db.commit()
    db.close()
    versions.write_service_shape(tmp_path / "models-0", WindowShape(3, 128))  # wrong service
    cfg = load_config(overrides=[*BASE, "fed.clients=5", "fed.teacher_placement=cloud"])
    grid = InProcessGrid(load_component("client.node.client_app:app"), 5, node_config=lambda i: {
        "partition-id": i, "store-path": str(tmp_path / f"store-{i}.db"),
        "model-dir": str(tmp_path / f"models-{i}")})
    with caplog.at_level(logging.WARNING):
        result = federate(grid, cfg, progress=False)
    assert [r["clients"] for r in result.rounds] == [1, 1]  # the server kept going
    logs = [r.getMessage() for r in caplog.records]
    problems = {1: "0 window(s) stored", 2: "not a readable window store",
                3: "windows of shape [3, 128]", 4: "NaN or Inf value(s), first in window 2"}
    for client, problem in problems.items():
        store = str(tmp_path / f"store-{client}.db")
        for rnd in (0, 1, 2):  # the count query, then every round
            assert any(store in t and problem in t and f"client {client}, round {rnd}" in t
                       for t in logs), (client, rnd, problem)
    # nodes 1-4 failed the count query (no model tag: they get it at their next contact), and
    # node 0's service takes [3, 128]
    assert result.delivered == {}
    assert any("did not install" in t and "client 0, round 2" in t and "[3, 128]" in t
               for t in logs)
    assert versions.versions(tmp_path / "models-0") == []


# ---------------------------------------------------------------- a restarted node


def test_a_restarted_node_is_sent_the_teacher_again(tmp_path):
    cfg = load_config(overrides=[*BASE, "fed.rounds=3", "fed.teacher_placement=edge"])
    grid = device_grid(tmp_path, [20, 24], model_dirs=False)

    def restart(rnd, cloud, row):
        if rnd == 1:  # node 1 restarts: its context.state (the teacher cache) is gone
            grid.contexts[1001].state = type(grid.contexts[1001].state)()

    result = federate(grid, cfg, progress=False, on_round=restart)
    assert [r["clients"] for r in result.rounds] == [2, 1, 2]
    assert len(result.rejected) == 1 and "not cached" in result.rejected[0]
    assert "client 1, round 2" in result.rejected[0]
    teacher_rounds = sorted({r["round"] for r in result.ledger.rows
                             if r["record"] == wire.TEACHER and r["node"] == 1001})
    assert teacher_rounds == [1, 3]  # sent again right after the failed round


def test_cached_teacher_outputs_follow_a_growing_store(tmp_path):
    """Windows ingested between rounds train the next round, teacher outputs included."""
    cfg = load_config(overrides=[*BASE, "fed.rounds=2", "fed.teacher_placement=edge"])
    grid = device_grid(tmp_path, [20, 20], model_dirs=False)

    def ingest(rnd, cloud, row):
        if rnd == 1:
            store = WindowStore(tmp_path / "store-0.db", SHAPE)
            store.append([NewWindow("imu", np.ones((SPEC.channels, SPEC.length), np.float32))
                          for _ in range(7)])
            store.close()

    result = federate(grid, cfg, progress=False, on_round=ingest)
    assert [r["clients"] for r in result.rounds] == [2, 2] and result.rejected == []


# ---------------------------------------------------------------- the commands


def test_edge_command_points_the_node_at_the_store_and_model_dir(tmp_path, capsys):
    fill_store(tmp_path / "s.db", 3, seed=0)
    versions.write_service_shape(tmp_path / "m", SHAPE)
    base = ["edge", "--superlink", "cloud:8000", "--insecure", "--client-id", "4", "--dry-run",
            "--allow-unsigned-apps"]
    assert unikd([*base, "--store", str(tmp_path / "s.db"), "--model-dir",
                  str(tmp_path / "m")]) == 0
    line = capsys.readouterr().out
    assert f'store-path="{tmp_path / "s.db"}"' in line and f'model-dir="{tmp_path / "m"}"' in line
    assert "partition-id=4" in line and "--insecure" in line
    assert "--node-poll 0.1 " in line  # the launcher's idle poll of the cloud, by default
    assert unikd([*base, "--store", str(tmp_path / "s.db"), "--node-poll", "0.5"]) == 0
    assert "--node-poll 0.5 " in capsys.readouterr().out
    versions.write_service_shape(tmp_path / "m3", WindowShape(3, 128))
    for extra, msg in ((["--store", str(tmp_path / "s.db"), "--model-dir", str(tmp_path / "m3")],
                        "not the same service"),
                       (["--store", str(tmp_path / "none.db")], "no window store"),
                       ([], "--data DIR"),
                       (["--model-dir", str(tmp_path / "m")], "goes with --store")):
        assert unikd([*base, *extra]) == 2
        assert msg in capsys.readouterr().err, msg


def test_edge_rollback_and_pull_commands(tmp_path, capsys):
    folder = tmp_path / "models"
    versions.write_service_shape(folder, SHAPE)
    norm = Normalizer.identity(SPEC.channels)
    for k in range(2):
        install_delivered(folder, random_student(k), norm, SPEC, k, f"t{k}")
    assert unikd(["edge-rollback", "--model-dir", str(folder)]) == 0
    assert "version 1 in service (was 2" in capsys.readouterr().out
    assert versions.current_version(folder) == 1
    assert unikd(["edge-rollback", "--model-dir", str(folder)]) == 2
    assert "oldest" in capsys.readouterr().err
    assert unikd(["edge-pull", "--run", str(tmp_path), "--model", "a.pt", "--model-dir",
                  str(folder)]) == 2
    assert "--model FILE or --model-dir DIR" in capsys.readouterr().err


def test_the_served_student_has_the_bn_statistics_its_evaluation_used(tmp_path):
    """fed.bn_policy=reestimate: federated evaluation scores the student with BN statistics
    re-estimated on each node's windows, so the version each node installs for `unikd serve`
    carries exactly those, not the cloud's (which would serve a different model than the one
    scored); the weights are the delivered ones, and the version tag is the delivery's."""
    import torch

    from client.node.target_side import reestimate_bn
    from shared.protocol import checkpoints

    grid = device_grid(tmp_path, [23, 31])
    cfg = load_config(overrides=[*BASE, "fed.bn_policy=reestimate",
                                 "fed.teacher_placement=cloud"])
    result = federate(grid, cfg, progress=False)
    assert result.delivered == {0: 1, 1: 1}
    # the delivered student is the reported one (the EMA under the default distill.ema_decay)
    cloud = {k.removeprefix("student."): v
             for k, v in student_state(result.cloud.reported_nets()).items()
             if k.startswith("student.")}
    served = [checkpoints.load(tmp_path / f"models-{i}" / versions.version_file(1),
                               checkpoints.EDGE_BUNDLE)["state_dict"] for i in range(2)]
    stats = [k for k in cloud if "running_" in k]
    assert stats
    for name, value in cloud.items():  # weights as delivered; BN statistics each node's own
        if name in stats:
            assert not torch.allclose(served[0][name], value), name
            assert not torch.allclose(served[0][name], served[1][name]), name
        elif not name.endswith("num_batches_tracked"):
            assert torch.equal(served[0][name], value), name
    nets = UniKDNets.for_spec(SPEC)  # node 0's re-estimation, done here by hand
    nets.student.load_state_dict(cloud)
    norm = result.cloud.source.normalizer
    reestimate_bn(nets.student, norm(store_windows(tmp_path / "store-0.db")))
    mine = nets.student.state_dict()
    for name in stats:  # block 1 exactly; later blocks see the student's dropout (train mode)
        close = dict(atol=1e-5) if name.startswith("block1.") else dict(atol=0.2, rtol=0.2)
        assert torch.allclose(served[0][name], mine[name], **close), name
    assert versions.history(tmp_path / "models-0")["1"]["tag"] == \
        installed_tag(tmp_path / "models-1")
