"""One packed array per message: the codec is lossless and strict, the ClientApp mod packs only
after the wire check, and a packed federation equals an unpacked one bit for bit."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from shared.config import load_config
from shared.protocol import wire
from shared.protocol.packing import (STYPE, PackError, is_packed, pack_content,
                                     unpack_content)
from shared.protocol.records import student_state

DTYPES = ["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool",
          "complex64"]
SHAPES = [(), (0,), (1,), (3, 4), (2, 0, 5), (2, 3, 4, 5)]


def _array(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(rng.standard_normal(shape) * 100).astype(dtype)


def _all_arrays() -> RecordDict:
    content = RecordDict({"config": ConfigRecord({"round": 3, "name": "x"})})
    for i, dtype in enumerate(DTYPES):
        content[f"rec-{dtype}"] = ArrayRecord({f"a{j}": Array(_array(dtype, s, 10 * i + j))
                                               for j, s in enumerate(SHAPES)})
    content["metrics"] = MetricRecord({"loss": 0.5})
    content["torch"] = ArrayRecord({"w": Array(torch.randn(3, 2)),
                                    "n": Array(torch.tensor(7, dtype=torch.int64))})
    return content


def _same(a: RecordDict, b: RecordDict) -> None:
    assert list(a.keys()) == list(b.keys())
    for key in a:
        ra, rb = a[key], b[key]
        assert type(ra) is type(rb), key
        if isinstance(ra, ArrayRecord):
            assert list(ra.keys()) == list(rb.keys()), key
            for name in ra:
                x, y = ra[name], rb[name]
                assert (x.dtype, tuple(x.shape), x.stype, x.data) == \
                    (y.dtype, tuple(y.shape), y.stype, y.data), (key, name)
                np.testing.assert_array_equal(x.numpy(), y.numpy())
                assert x.numpy().dtype == y.numpy().dtype and x.numpy().shape == y.numpy().shape
        else:
            assert dict(ra) == dict(rb), key


def test_codec_round_trips_every_dtype_and_shape_exactly():
    content = _all_arrays()
    packed = pack_content(content)
    assert is_packed(packed)
    assert [k for k, r in packed.items() if isinstance(r, ArrayRecord)] == [wire.PACKED]
    assert len(packed[wire.PACKED].keys()) == 1
    wire_copy = recorddict_from_proto(recorddict_to_proto(packed))  # what the transport carries
    _same(content, unpack_content(wire_copy))
    assert recorddict_to_proto(unpack_content(wire_copy)) == recorddict_to_proto(content)


def test_content_without_arrays_is_left_alone():
    content = RecordDict({"metrics": MetricRecord({"num-examples": 3})})
    assert pack_content(content) is content and unpack_content(content) is content


def _blob(content: RecordDict) -> bytes:
    return bytes(pack_content(content)[wire.PACKED]["blob"].data)


def _with_blob(blob: bytes, stype: str = STYPE) -> RecordDict:
    return RecordDict({wire.PACKED: ArrayRecord({"blob": Array(
        dtype="uint8", shape=(len(blob),), stype=stype, data=blob)})})


@pytest.mark.parametrize("damage, match", [
    (lambda b: b + b"\0", "payload"),  # one byte riding along unlisted
    (lambda b: b[:-1], "payload"),  # truncated
    (lambda b: b"NOTOURS!" + b[8:], "packing header"),
    (lambda b: b[:8] + struct.pack("<I", 10**9) + b[12:], "claims"),
    (lambda b: b[:12] + b"x" + b[13:], "malformed"),
])
def test_a_damaged_blob_is_refused(damage, match):
    content = RecordDict({"w": ArrayRecord({"x": Array(np.ones((2, 3), np.float32))})})
    with pytest.raises(PackError, match=match):
        unpack_content(_with_blob(damage(_blob(content))))


def test_foreign_or_clashing_packed_records_are_refused():
    content = RecordDict({"w": ArrayRecord({"x": Array(np.ones(2, np.float32))})})
    with pytest.raises(PackError, match="serialisation type"):
        unpack_content(_with_blob(_blob(content), stype="numpy.ndarray"))
    clash = _with_blob(_blob(content))
    clash["w"] = ConfigRecord({"a": 1})
    with pytest.raises(PackError, match="both packed and unpacked"):
        unpack_content(clash)
    with pytest.raises(PackError, match="reserved"):
        pack_content(RecordDict({wire.PACKED: ConfigRecord({"a": 1})}))


def test_client_mod_checks_the_unpacked_reply_then_packs(monkeypatch):
    """The handler's wire check sees records (a leak is refused before packing), and a valid
    reply leaves the node packed."""
    import client.node.client_app as client_app

    cfg = load_config(overrides=["fed.clients=1", "fed.rounds=1", "distill.epochs=1",
                                 "teacher.epochs=1", "fed.teacher_placement=source-only"])
    replies: list[Message] = []
    grid = InProcessGrid(load_component("client.node.client_app:app"), 1)
    pull = grid.pull_messages

    def keep(ids):
        got = pull(ids)
        replies.extend(got)
        return got

    monkeypatch.setattr(grid, "pull_messages", keep)  # the replies as they leave the nodes
    federate(grid, cfg, progress=False)
    train = [r for r in replies if r.metadata.message_type == "train"]
    assert train and all(is_packed(r.content) for r in train)
    assert sorted(unpack_content(train[0].content).keys()) == sorted([
        wire.STUDENT_GRAD, wire.D_F_GRAD, wire.D_D_GRAD, wire.STUDENT_BN, wire.METRICS])

    real = client_app.unikd_round

    def leaky(nets, x, teacher, rc, cid, prototypes=None, mover=None):
        grads, buffers, metrics = real(nets, x, teacher, rc, cid, prototypes, mover)
        return grads, {**buffers, "student.per_sample": torch.randn(len(x), 4)}, metrics

    monkeypatch.setattr(client_app, "unikd_round", leaky)
    replies.clear()
    result = federate(grid, cfg, progress=False)
    train = [r for r in replies if r.metadata.message_type == "train"]
    assert train and all(r.has_error() and "WireViolation" in r.error.reason for r in train)
    assert result.rejected


@pytest.fixture(scope="module")
def packed_and_plain():
    base = ["fed.clients=2", "fed.rounds=2", "distill.epochs=1", "teacher.epochs=1",
            "teacher.batch_size=128", "fed.teacher_placement=edge"]
    runs = {}
    for pack in ("true", "false"):
        cfg = load_config(overrides=[*base, f"fed.pack={pack}"])
        grid = InProcessGrid(load_component("client.node.client_app:app"), 2)
        runs[pack] = federate(grid, cfg, progress=False)
    return runs["true"], runs["false"]


def test_packed_federation_equals_unpacked_bit_for_bit(packed_and_plain):
    packed, plain = packed_and_plain
    a, b = student_state(packed.cloud.nets), student_state(plain.cloud.nets)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for mod in ("d_f", "d_d"):
        for (n, p), (_, q) in zip(getattr(packed.cloud.nets, mod).named_parameters(),
                                  getattr(plain.cloud.nets, mod).named_parameters()):
            assert torch.equal(p, q), f"{mod}.{n}"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa
    assert strip(packed.rounds) == strip(plain.rounds)
    assert packed.evals == plain.evals


def test_ledger_stays_per_record(packed_and_plain):
    packed, plain = packed_and_plain
    assert packed.ledger.rows == plain.ledger.rows
    records = {r["record"] for r in packed.ledger.rows}
    assert wire.PACKED not in records
    assert {wire.STUDENT, wire.TEACHER, wire.STUDENT_GRAD, wire.STUDENT_BN} <= records
