"""Stage 2: a small, mutable graph the passes and the code generator work on.

Shapes come from onnx shape inference, run with the batch dimension of every runtime input made
symbolic, so a dimension equal to ``BATCH`` is known to follow the batch size.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from . import shapes
from .errors import ConversionError
from .types import check_input_types
from .loader import LoadedModel, without_weights
from .settle import settle_ifs

BATCH = "batch"
Dim = int | str | None


@dataclass
class Value:
    name: str
    shape: tuple[Dim, ...] | None = None
    dtype: np.dtype | None = None
    const: np.ndarray | None = None

    @property
    def rank(self) -> int | None:
        if self.const is not None:
            return self.const.ndim
        return None if self.shape is None else len(self.shape)


@dataclass
class Node:
    op_type: str
    domain: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int
    proto: onnx.NodeProto | None = None

    def describe(self) -> str:
        label = f"{self.op_type} node {self.name!r}" if self.name else f"{self.op_type} node"
        return f"{label} (output {self.outputs[0]!r})" if self.outputs else label


@dataclass
class Graph:
    nodes: list[Node]
    values: dict[str, Value]
    inputs: list[str]
    outputs: list[str]
    opsets: dict[str, int]
    source: LoadedModel
    producer: str = ""
    static_batch_inputs: dict[str, int] = field(default_factory=dict)  # input -> its fixed batch size

    def value(self, name: str) -> Value:
        if name not in self.values:
            self.values[name] = Value(name)
        return self.values[name]

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def producer_of(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def where(self, node: Node | None = None) -> str:
        where = str(self.source.path)
        return f"{where}: {node.describe()}" if node is not None else where


_DTYPES = {}
for _code in onnx.TensorProto.DataType.values():
    try:
        _DTYPES[_code] = np.dtype(helper.tensor_dtype_to_np_dtype(_code))
    except Exception:
        pass


def _dims(type_proto: onnx.TypeProto) -> tuple[tuple[Dim, ...] | None, np.dtype | None]:
    if not type_proto.HasField("tensor_type"):
        return None, None
    tensor = type_proto.tensor_type
    dtype = _DTYPES.get(tensor.elem_type)
    if not tensor.HasField("shape"):
        return None, dtype
    dims: list[Dim] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims), dtype


def _with_symbolic_batch(proto: onnx.ModelProto, runtime_inputs: list[str]) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Copy of the model whose runtime inputs have a symbolic first dimension; returns which were static."""
    model = copy.copy(proto)
    model.CopyFrom(proto)
    static: dict[str, int] = {}
    for inp in model.graph.input:
        if inp.name not in runtime_inputs or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) >= 2:
            if dims[0].HasField("dim_value"):
                static[inp.name] = dims[0].dim_value
            dims[0].Clear()
            dims[0].dim_param = BATCH
    return model, static


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    attrs = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", errors="replace") for v in value]
        attrs[attr.name] = value
    return attrs


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def implicit_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope values the node's subgraphs (If branches, Loop bodies) read, in first-use order.

    They are appended to the node's inputs, after its own, so that passes which follow data flow
    (dead-node removal, Identity forwarding) see them."""
    found: dict[str, None] = {}
    for g in _subgraphs(node):
        local = {i.name for i in g.input} | {t.name for t in g.initializer}
        for inner in g.node:
            for name in list(inner.input) + implicit_inputs(inner):
                if name and name not in local:
                    found.setdefault(name)
            local.update(inner.output)
        for out in g.output:
            if out.name not in local:
                found.setdefault(out.name)
    return list(found)


def _subgraph_value_infos(g: onnx.GraphProto):
    for node in g.node:
        for sub in _subgraphs(node):
            yield from list(sub.input) + list(sub.value_info) + list(sub.output)
            yield from _subgraph_value_infos(sub)


def _refine_shapes(model: onnx.ModelProto, values: dict[str, Value], runtime_inputs: list[str]) -> None:
    """Fill what onnx inference left unknown from a probe run, then from symbolic inference.

    ``model`` is the weight-free copy shape inference saw; the probe reads the weights from ``values`` in
    place. Only values something reads are asked about: an output no node or graph output uses (Dropout's
    mask) needs no shape, and asking about it alone would cost a run of the whole graph.
    The probe goes first because it is the faster of the two by far (swin_t: 1 s against 9 s of
    pure-Python symbolic inference); symbolic inference covers graphs onnxruntime cannot run on made-up inputs.
    """
    read = {o.name for o in model.graph.output}
    for n in model.graph.node:
        read.update(n.input)
        read.update(implicit_inputs(n))
    names = [o for n in model.graph.node for o in n.output if o and o in read]
    declared = shapes.declared_dims(model, runtime_inputs)
    todo = shapes.needs_refining(values, names, declared)
    if not todo:
        return
    inits = {t.name for t in model.graph.initializer}
    weights = {i.name: values[i.name].const for i in model.graph.input
               if i.name not in runtime_inputs and i.name not in inits and i.name in values
               and values[i.name].const is not None}
    for name, (shape, dtype) in (shapes.probe(model, runtime_inputs, todo, weights) or {}).items():
        _update(values, name, shape, dtype, declared)
    todo = [n for n in shapes.needs_refining(values, todo, declared) if n not in values or values[n].shape is None]
    symbolic = shapes.symbolic_infer(model) if todo else None
    # symbolic inference splits evenly where a Split's sizes are computed at run time: keep only the rank
    guessed = {o for n in model.graph.node if n.op_type == "Split" and len(n.input) > 1 and n.input[1]
               and (values.get(n.input[1]) is None or values[n.input[1]].const is None) for o in n.output}
    for vi in symbolic.graph.value_info if symbolic is not None else ():
        if vi.name in todo:
            shape, dtype = _dims(vi.type)
            if vi.name in guessed and shape is not None:
                shape = (None,) * len(shape)
            _update(values, vi.name, shape, dtype, declared)


def _update(values: dict[str, Value], name: str, shape, dtype, declared: set[str]) -> None:
    value = values.setdefault(name, Value(name))
    value.shape = shapes.merge(value.shape, shape, declared)
    if value.dtype is None:
        value.dtype = dtype


def build_graph(loaded: LoadedModel) -> Graph:
    proto = loaded.proto
    g = proto.graph
    opsets = {op.domain if op.domain != "ai.onnx" else "": op.version for op in proto.opset_import}
    init_names = {t.name for t in g.initializer} | set(loaded.weights)
    runtime_inputs = [i.name for i in g.input if i.name not in init_names]

    settle_ifs(proto, lambda: _with_symbolic_batch(without_weights(proto, loaded.weights), runtime_inputs)[0])
    symbolic, static = _with_symbolic_batch(without_weights(proto, loaded.weights), runtime_inputs)
    try:
        inferred = shape_inference.infer_shapes(symbolic, data_prop=True)
    except Exception as exc:
        raise ConversionError(f"{loaded.path}: shape inference failed: {exc}") from exc

    values: dict[str, Value] = {}
    for vi in list(_subgraph_value_infos(inferred.graph)) + list(inferred.graph.value_info) + \
            list(inferred.graph.input) + list(inferred.graph.output):
        shape, dtype = _dims(vi.type)
        values[vi.name] = Value(vi.name, shape, dtype)
    for t in g.initializer:
        array = numpy_helper.to_array(t)
        values[t.name] = Value(t.name, tuple(array.shape), array.dtype, array)
    for name, array in loaded.weights.items():
        values[name] = Value(name, tuple(array.shape), array.dtype, array)
    _refine_shapes(symbolic, values, runtime_inputs)

    nodes = []
    for i, n in enumerate(g.node):
        domain = n.domain if n.domain != "ai.onnx" else ""
        if domain not in opsets:
            raise ConversionError(f"{loaded.path}: node {n.name!r} uses domain {domain!r} with no opset import")
        nodes.append(Node(n.op_type, domain, n.name, list(n.input) + implicit_inputs(n), list(n.output),
                          _attributes(n), opsets[domain], n))
        for out in n.output:
            values.setdefault(out, Value(out))
    if not [o.name for o in g.output]:
        raise ConversionError(f"{loaded.path}: the graph has no outputs")
    graph = Graph(
        nodes=nodes,
        values=values,
        inputs=runtime_inputs,
        outputs=[o.name for o in g.output],
        opsets=opsets,
        source=loaded,
        producer=proto.producer_name,
        static_batch_inputs=static,
    )
    check_input_types(graph)
    return graph
