"""Replace each If whose condition the static sizes already decide by the branch it takes, before shapes are
inferred: exporters guard code with checks such as ``x.dim() == 3`` (PyTorch's batched-input test before an
LSTM), and the branches of such an If often differ in rank, which leaves everything after it without one.

Works on the ModelProto, in rounds: infer shapes (batch symbolic), settle what the sizes decide, repeat.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

MAX_ROUNDS = 8
_SMALL = 64  # constants bigger than this never decide a condition


def _dims_of(vi: onnx.ValueInfoProto):
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _all_value_infos(g: onnx.GraphProto):
    yield from list(g.input) + list(g.value_info) + list(g.output)
    for node in g.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _all_value_infos(sub)


def _equal(a, b):
    a, b = np.broadcast_arrays(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    # an unknown size (None) makes the comparison unknown, never False
    return np.array([None if x is None or y is None else bool(x == y) for x, y in zip(a.flat, b.flat)],
                    dtype=object).reshape(a.shape)


def _known(*arrays) -> bool:
    if any(v is None for a in arrays for v in np.asarray(a, dtype=object).reshape(-1)):
        raise ValueError("unknown")
    return True


# The ops a condition on sizes is made of, on object arrays where None is a size not known statically.
STATIC_OPS: dict[str, Callable] = {
    "Gather": lambda n, x, i: np.take(x, np.asarray(i, dtype=np.int64), axis=attr(n, "axis", 0)),
    "Equal": lambda n, a, b: _equal(a, b),
    "Not": lambda n, a: _known(a) and np.logical_not(a.astype(bool)),
    "And": lambda n, a, b: _known(a, b) and np.logical_and(a.astype(bool), b.astype(bool)),
    "Or": lambda n, a, b: _known(a, b) and np.logical_or(a.astype(bool), b.astype(bool)),
    "Identity": lambda n, a: a,
    "Cast": lambda n, a: a,
    "Squeeze": lambda n, a, *axes: a.reshape(()) if a.size == 1 else a,
    "Unsqueeze": lambda n, a, *axes: a.reshape(-1),
}


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _decided(v) -> bool | None:
    v = np.asarray(v, dtype=object).reshape(-1)
    if v.size != 1 or v[0] is None:
        return None
    return bool(v[0])


class _Scope:
    """What a (sub)graph knows statically: small constants and the sizes inferred for its values."""

    def __init__(self, graph: onnx.GraphProto, shapes: dict, parent: "_Scope | None" = None):
        self.shapes, self.parent = shapes, parent
        self.consts: dict[str, np.ndarray] = {}
        self.producers = {o: n for n in graph.node for o in n.output}
        for t in graph.initializer:
            if int(np.prod(t.dims)) <= _SMALL:
                self.consts[t.name] = numpy_helper.to_array(t)

    def value(self, name: str, depth: int = 0):
        if name in self.consts:
            return self.consts[name]
        node = self.producers.get(name)
        if node is None:
            return self.parent.value(name, depth) if self.parent is not None else None
        if depth > 64 or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant":
            t = attr(node, "value", None)
            return numpy_helper.to_array(t) if isinstance(t, onnx.TensorProto) else None
        if node.op_type in ("Shape", "Size"):
            dims = self.shapes.get(node.input[0])
            if dims is None:
                return None
            if node.op_type == "Size":
                return np.array(int(np.prod(dims))) if all(d is not None for d in dims) else None
            return np.array(dims[attr(node, "start", 0):attr(node, "end", len(dims))], dtype=object)
        if node.op_type not in STATIC_OPS:
            return None
        args = [self.value(i, depth + 1) for i in node.input if i]
        if any(a is None for a in args):
            return None
        try:
            return np.asarray(STATIC_OPS[node.op_type](node, *args))
        except Exception:  # a None met arithmetic: not decided
            return None


def _inline(graph: onnx.GraphProto, shapes: dict, parent: _Scope | None) -> bool:
    scope = _Scope(graph, shapes, parent)
    changed = False
    nodes = []
    for node in graph.node:
        if node.op_type == "If" and node.domain in ("", "ai.onnx"):
            taken = _decided(scope.value(node.input[0]))
            if taken is not None:
                branch = attr(node, "then_branch" if taken else "else_branch", None)
                nodes.extend(helper.make_node("Constant", [], [t.name], value=t) for t in branch.initializer)
                nodes.extend(branch.node)
                nodes.extend(helper.make_node("Identity", [b.name], [o], name=f"{o}_settled")
                             for b, o in zip(branch.output, node.output) if o)
                changed = True
                continue
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                changed |= _inline(sub, shapes, scope)
        nodes.append(node)
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
    return changed


def has_if(graph: onnx.GraphProto) -> bool:
    return any(n.op_type == "If" or any(has_if(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
               for n in graph.node)


def settle_ifs(proto: onnx.ModelProto, light: Callable[[], onnx.ModelProto]) -> None:
    """Inline, in ``proto``, every If the static sizes decide. ``light()`` gives the weight-free,
    batch-symbolic copy of the current ``proto`` that shape inference runs on."""
    for _ in range(MAX_ROUNDS):
        if not has_if(proto.graph):
            return
        try:
            inferred = shape_inference.infer_shapes(light(), data_prop=True)
        except Exception:  # inference is a help here; build_graph reports a model it cannot read
            return
        shapes = {vi.name: _dims_of(vi) for vi in _all_value_infos(inferred.graph)}
        if not _inline(proto.graph, shapes, None):
            return
