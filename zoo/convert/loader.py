"""Stage 1: read an ONNX file from disk, check it, and keep external data inside the model's folder."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from .errors import ConversionError
from .wire import read_apart


@dataclass(frozen=True)
class LoadedModel:
    proto: onnx.ModelProto
    path: Path
    sha256: str
    # Big initializers read straight into arrays, kept out of ``proto`` so the weights are in memory once.
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_external_locations(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external-data locations that escape the model's folder (.., absolute paths, symlinks)."""
    base = path.parent.resolve()
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        if not location or os.path.isabs(location) or Path(location).drive:
            raise ConversionError(f"{path}: tensor {tensor.name!r} has external data at an absolute or empty location")
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise ConversionError(f"{path}: tensor {tensor.name!r} has external data outside the model's folder")
        if not target.is_file():
            raise ConversionError(f"{path}: external data file for tensor {tensor.name!r} is missing")


# Initializers with more elements than this are declared as typed graph inputs in the copy that the checker
# and shape inference see: both serialize the model, which for VGG-19 means copying 548 MB several times.
# Smaller ones stay, since shape inference's data propagation reads constant shape tensors.
SMALL_TENSOR = 1024


def without_weights(proto: onnx.ModelProto, apart: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A copy of the model whose big initializers (and those kept ``apart``) are graph inputs of the same
    type and shape."""
    light = onnx.ModelProto()
    graph = proto.graph
    light.CopyFrom(onnx.ModelProto(ir_version=proto.ir_version, opset_import=proto.opset_import,
                                   producer_name=proto.producer_name, domain=proto.domain,
                                   model_version=proto.model_version, functions=proto.functions))
    g = light.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    g.sparse_initializer.extend(graph.sparse_initializer)
    declared = {i.name for i in graph.input}
    for t in graph.initializer:
        if int(np.prod(t.dims)) <= SMALL_TENSOR:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for name, array in (apart or {}).items():
        if name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)))
    return light


def load_model(onnx_path: str | os.PathLike, weights_apart: bool = True) -> LoadedModel:
    """The checked model; with ``weights_apart``, its big initializers as arrays in ``weights``."""
    path = Path(onnx_path)
    if path.is_dir():
        raise ConversionError(f"{path}: is a folder; pass the .onnx file inside it")
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path}: the file is empty")
    proto, weights = None, {}
    if weights_apart:
        try:
            light, weights, sha256 = read_apart(path, SMALL_TENSOR)
            proto = onnx.load_model_from_string(light)
        except Exception:  # anything unusual: protobuf's own parser, below, says what is wrong
            proto, weights = None, {}
    if proto is None:
        proto, sha256 = _parse_whole(path)
    if not proto.graph.node and not proto.graph.output:
        raise ConversionError(f"{path}: not an ONNX model (no graph)")
    _check_external_locations(proto, path)
    try:
        external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ConversionError(f"{path}: cannot read external data ({exc})") from exc
    # IR 3 wanted every initializer declared as a graph input; onnxruntime's quantizer adds scales and zero
    # points to IR-3 files without declaring them, and onnxruntime runs such files. IR 4 reads them alike.
    proto.ir_version = max(proto.ir_version, 4)
    _check_opsets(proto, path)
    _check_tensors(proto.graph, path)
    try:
        onnx.checker.check_model(_onnxruntime_ops_apart(without_weights(proto, weights)))
    except Exception as exc:
        raise ConversionError(f"{path}: fails onnx.checker: {exc}") from exc
    return LoadedModel(proto=proto, path=path, sha256=sha256, weights=weights)


# Ops onnxruntime defines in the ai.onnx domain itself (its transformer optimizer writes them there, LayerNormalization
# also before opset 17 made it ONNX's); the checker, which knows only ONNX's schemas, sees them in onnxruntime's own
# domain instead.
ONNXRUNTIME_AI_ONNX_OPS = {"SimplifiedLayerNormalization", "LayerNormalization"}


def _onnxruntime_ops_apart(light: onnx.ModelProto) -> onnx.ModelProto:
    opset = next((o.version for o in light.opset_import if o.domain in ("", "ai.onnx")), 0)

    def onnx_defines(op: str) -> bool:
        try:
            return onnx.defs.get_schema(op, opset, "").since_version <= opset
        except Exception:  # onnx.defs.SchemaError: no such op at this opset
            return False

    moved = [n for n in light.graph.node if n.domain in ("", "ai.onnx") and n.op_type in ONNXRUNTIME_AI_ONNX_OPS
             and not onnx_defines(n.op_type)]
    for node in moved:
        node.domain = "com.microsoft"
    if moved and not any(o.domain == "com.microsoft" for o in light.opset_import):
        light.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return light


def _check_opsets(proto: onnx.ModelProto, path: Path) -> None:
    """An ai.onnx opset newer than the installed onnx defines cannot be read faithfully: its ops may have
    changed meaning, and handlers resolve by the newest opset they know (onnx.checker lets it pass)."""
    newest = onnx.defs.onnx_opset_version()
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > newest:
            raise ConversionError(f"{path}: opset import ai.onnx version {op.version} is newer than the {newest} that "
                                  f"onnx {onnx.__version__} defines; its ops' meaning is unknown here")


_SUB_BYTE = {"INT4": 2, "UINT4": 2, "FLOAT4E2M1": 2, "INT2": 4, "UINT2": 4}  # elements per byte


def _raw_size(data_type: int, count: int) -> int | None:
    name = onnx.TensorProto.DataType.Name(data_type) if data_type in onnx.TensorProto.DataType.values() else ""
    if name in _SUB_BYTE:
        return -(-count // _SUB_BYTE[name])
    if name in ("", "UNDEFINED", "STRING"):
        return None
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def _check_tensor(t: onnx.TensorProto, path: Path, what: str) -> None:
    """The tensor decodes to its declared dtype and dims; a cheap length check for big raw ones."""
    where = f"{path}: {what} {t.name!r}"
    if any(d < 0 for d in t.dims):
        raise ConversionError(f"{where} has negative dims {list(t.dims)}")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return  # checked when its data is read
    count = int(np.prod(t.dims, dtype=object))
    if t.HasField("raw_data") and count > SMALL_TENSOR:
        expected = _raw_size(t.data_type, count)
        if expected != len(t.raw_data):
            raise ConversionError(f"{where}: raw_data holds {len(t.raw_data):,} bytes where data_type "
                                  f"{t.data_type} and dims {list(t.dims)} need {expected if expected is not None else 'none'}")
        return
    try:
        numpy_helper.to_array(t)
    except Exception as exc:  # onnx raises ValueError, TypeError, KeyError... for what does not decode
        raise ConversionError(f"{where} (data_type {t.data_type}, dims {list(t.dims)}) does not decode: "
                              f"{type(exc).__name__}: {exc}") from None


def _check_tensors(graph: onnx.GraphProto, path: Path) -> None:
    """Every initializer and tensor attribute, in subgraphs too, before anything reads one."""
    for t in graph.initializer:
        _check_tensor(t, path, "initializer")
    for node in graph.node:
        for a in node.attribute:
            for t in ([a.t] if a.HasField("t") else []) + list(a.tensors):
                _check_tensor(t, path, f"node {node.name!r} attribute {a.name!r}: tensor")
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _check_tensors(g, path)


def _parse_whole(path: Path) -> tuple[onnx.ModelProto, str]:
    data = path.read_bytes()
    with ThreadPoolExecutor(1) as pool:  # hashlib releases the GIL: hash while protobuf parses
        digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise ConversionError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
        return proto, digest.result()
