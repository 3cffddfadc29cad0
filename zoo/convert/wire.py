"""Read an ONNX file with its big initializers going straight into numpy arrays, the rest into a light model.

protobuf's parser needs the whole file in memory next to the parsed message, and numpy then copies each
weight out of the message again. Walking the wire format of the mapped file instead makes each big
tensor's ``raw_data`` an array over the map: no copy at all, and no fresh memory to fault in (which on a
2-core VM costs more than reading the page cache). Anything unexpected raises
:class:`Malformed`, and the caller falls back to protobuf's parser (which reports the problem properly).
"""
from __future__ import annotations

import hashlib
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from onnx import TensorProto

# ONNX field numbers (onnx.proto): ModelProto.graph, GraphProto.initializer, TensorProto.dims/data_type/raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_RAW_DATA, _TENSOR_DATA_LOCATION = 1, 2, 9, 14
_PLAIN_DTYPES = {
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
    TensorProto.INT8: np.int8, TensorProto.INT16: np.int16, TensorProto.INT32: np.int32, TensorProto.INT64: np.int64,
    TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16, TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_,
}
_CHUNK = 1 << 26


class Malformed(Exception):
    pass


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    """Sequential reads of the mapped file; big tensors become arrays over the map, not copies."""

    def __init__(self, mapped: mmap.mmap):
        self.mapped, self.view = mapped, memoryview(mapped)
        self.size, self.pos = len(mapped), 0

    def read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise Malformed("a length runs past the end of the file")
        data = bytes(self.view[self.pos:self.pos + n])
        self.pos += n
        return data

    def array(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape)) if shape else 1
        if self.pos + count * np.dtype(dtype).itemsize > self.size:
            raise Malformed("a tensor runs past the end of the file")
        array = np.frombuffer(self.mapped, dtype=dtype, count=count, offset=self.pos).reshape(shape)
        self.pos += array.nbytes
        return array

    def varint(self) -> tuple[int, bytes]:
        raw = bytearray()
        while True:
            b = self.read(1)
            raw += b
            if not b[0] & 0x80:
                break
            if len(raw) > 10:
                raise Malformed("a varint longer than 10 bytes")
        value = 0
        for i, byte in enumerate(raw):
            value |= (byte & 0x7F) << (7 * i)
        return value, bytes(raw)


def _sha256(view: memoryview) -> str:
    digest = hashlib.sha256()
    for start in range(0, len(view), _CHUNK):
        digest.update(view[start:start + _CHUNK])
    return digest.hexdigest()


def _tensor(r: _Reader, end: int, min_elements: int) -> tuple[str, np.ndarray] | bytes:
    """A big plain tensor as (name, array), read in place; anything else as its bytes, to keep in the model."""
    head = bytearray()
    array = None
    while r.pos < end:
        tag, tag_raw = r.varint()
        number, wire = tag >> 3, tag & 7
        if number == _TENSOR_RAW_DATA and wire == 2 and array is None:
            n, n_raw = r.varint()
            stub = TensorProto.FromString(bytes(head))
            dtype = _PLAIN_DTYPES.get(stub.data_type)
            count = int(np.prod(stub.dims)) if len(stub.dims) else 1
            if dtype is not None and count >= min_elements and count * np.dtype(dtype).itemsize == n:
                array = r.array(dtype, tuple(stub.dims))
                continue
            head += tag_raw + n_raw + r.read(n)
            continue
        head += tag_raw + _value(r, wire)
    if r.pos != end:
        raise Malformed("a tensor's fields overrun it")
    if array is None:
        return bytes(head)
    stub = TensorProto.FromString(bytes(head))
    if stub.data_location == TensorProto.EXTERNAL or not stub.name:
        raise Malformed("external or unnamed tensor with raw data")
    return stub.name, array if np.little_endian else array.byteswap()


def _value(r: _Reader, wire: int) -> bytes:
    if wire == 0:
        return r.varint()[1]
    if wire == 1:
        return r.read(8)
    if wire == 5:
        return r.read(4)
    if wire == 2:
        n, n_raw = r.varint()
        return n_raw + r.read(n)
    raise Malformed(f"wire type {wire}")


def _graph(r: _Reader, end: int, weights: dict, min_elements: int) -> bytes:
    out = bytearray()
    while r.pos < end:
        tag, tag_raw = r.varint()
        if tag >> 3 == _GRAPH_INITIALIZER and tag & 7 == 2:
            n, _ = r.varint()
            found = _tensor(r, r.pos + n, min_elements)
            if isinstance(found, tuple):
                if found[0] in weights:
                    raise Malformed(f"two initializers named {found[0]!r}")
                weights[found[0]] = found[1]
            else:
                out += tag_raw + _varint_bytes(len(found)) + found
            continue
        out += tag_raw + _value(r, tag & 7)
    if r.pos != end:
        raise Malformed("the graph's fields overrun it")
    return bytes(out)


def read_apart(path: str | os.PathLike, min_elements: int) -> tuple[bytes, dict[str, np.ndarray], str]:
    """(the model's bytes without its big initializers, those initializers as arrays, the file's sha256).

    The arrays are views of a private (copy-on-write) map of the file: the weights are read from the page
    cache when first used, cost no copy, and writing to one never changes the file."""
    weights: dict[str, np.ndarray] = {}
    model = bytearray()
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    r = _Reader(mapped)
    with ThreadPoolExecutor(1) as pool:  # hashlib releases the GIL: hash while the structure is walked
        digest = pool.submit(_sha256, r.view)
        while r.pos < r.size:
            tag, tag_raw = r.varint()
            if tag >> 3 == _MODEL_GRAPH and tag & 7 == 2:
                n, _ = r.varint()
                graph = _graph(r, r.pos + n, weights, min_elements)
                model += tag_raw + _varint_bytes(len(graph)) + graph
            else:
                model += tag_raw + _value(r, tag & 7)
        return bytes(model), weights, digest.result()
