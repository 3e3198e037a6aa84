"""The fast tensor codec (shared/protocol/npy.py) must be Flower's codec, byte for byte."""

import numpy as np
import pytest
import torch
from flwr.app import Array

from shared.protocol import npy
from shared.protocol.records import from_record, to_record

CASES = [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_, np.float16]
SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 3, 4), (32, 9, 128), (1, 0, 3)]


@pytest.mark.parametrize("dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_encode_is_flowers_bytes_and_decode_round_trips(dtype, shape):
    x = np.asarray((np.random.default_rng(0).standard_normal(shape) * 100).astype(dtype))
    ours, theirs = npy.to_array(x), Array(x)
    assert (ours.dtype, tuple(ours.shape), ours.stype, ours.data) == \
        (theirs.dtype, tuple(theirs.shape), theirs.stype, theirs.data)
    for arr in (ours, theirs):
        back = npy.from_array(arr)
        assert back.dtype == x.dtype and back.shape == x.shape and np.array_equal(back, x)


def test_non_contiguous_and_big_endian_inputs():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # a strided view
    assert np.array_equal(npy.from_array(npy.to_array(x)), x)
    be = np.arange(5, dtype=">f8")
    assert npy.to_array(be).data == Array(np.ascontiguousarray(be)).data
    assert np.array_equal(npy.from_array(npy.to_array(be)), be)


def test_fortran_order_goes_to_flowers_decoder():
    x = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    arr = Array(x)  # np.save writes fortran_order True and column-major bytes
    assert np.array_equal(npy.from_array(arr), x)


def test_header_that_disagrees_with_the_declared_shape_is_not_trusted():
    x = np.arange(6, dtype=np.float32)
    good = Array(x)
    lying = Array(dtype="float32", shape=(2, 3), stype=good.stype, data=good.data)
    out = npy.from_array(lying)  # the bytes say (6,): np.load's reading wins, not a reshape
    assert out.shape == (6,)


def test_truncated_or_foreign_data_raises():
    good = Array(np.arange(6, dtype=np.float32))
    short = Array(dtype="float32", shape=(6,), stype=good.stype, data=good.data[:-4])
    with pytest.raises(ValueError):
        npy.from_array(short)
    other = Array(dtype="float32", shape=(6,), stype="torch.raw", data=good.data)
    with pytest.raises(TypeError):
        npy.from_array(other)


def test_object_arrays_never_travel():
    with pytest.raises(TypeError):
        npy.to_array(np.array([{"a": 1}], dtype=object))
    pickled = Array(dtype="object", shape=(1,), stype="numpy.ndarray",
                    data=b"\x93NUMPY\x01\x00v\x00" + b" " * 118)
    with pytest.raises(ValueError):
        npy.from_array(pickled)  # np.load with allow_pickle=False refuses


def test_records_round_trip_exactly():
    state = {"w": torch.randn(4, 3), "b": torch.randn(3).double(), "n": torch.tensor(7),
             "t": torch.randn(5, 2).t()}  # a transposed, non-contiguous tensor
    back = from_record(to_record(state))
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)
    back["w"].add_(1)  # decoded tensors are writable copies
    assert not torch.equal(back["w"], state["w"])
