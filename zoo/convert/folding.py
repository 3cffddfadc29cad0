"""Constant folding: every node whose inputs are all constants is evaluated once, at conversion, by onnx's
reference implementation, within the memory budget (a node's output is estimated before it is evaluated)."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from .checks import known, memory_budget
from .ir import Graph, Node, Value


# Never folded: their value is not a function of their inputs.
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                 "Bernoulli", "Dropout"}
# Their values are Python lists or None in the generated code, never constant tensors.
_NOT_FOLDABLE |= {"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SplitToSequence",
                  "SequenceMap", "Optional", "OptionalGetElement", "OptionalHasElement"}
_MAX_FOLDED_ELEMENTS = 1 << 26
# onnx's reference implementation evaluates these element by element in Python: a large output takes minutes.
_SLOW = {"Resize", "Upsample", "GridSample", "RoiAlign", "NonMaxSuppression", "Col2Im", "DeformConv",
         "MaxRoiPool", "MaxUnpool", "CenterCropPad", "AffineGrid", "Einsum", "Unique", "NonZero"}
_SLOW_ELEMENTS = 1 << 20
# Loop and Scan run their body once per iteration: folding one needs its trip count to be small.
_MAX_FOLDED_ITERATIONS = 1 << 12



def set_const(graph: Graph, name: str, array: np.ndarray) -> None:
    array = np.asarray(array)
    graph.values[name] = Value(name, tuple(array.shape), array.dtype, array)


def _static_shape(value: Value) -> tuple[int, ...] | None:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(value.shape)


def _single_node_model(graph: Graph, node: Node, inputs: list[str]) -> onnx.ModelProto:
    def info(name: str) -> onnx.ValueInfoProto:
        array = graph.value(name).const
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)

    outputs = [helper.make_empty_tensor_value_info(o) for o in node.outputs if o]
    body = helper.make_graph([node.proto], "fold", [info(i) for i in dict.fromkeys(inputs)], outputs)
    return helper.make_model(body, opset_imports=[helper.make_opsetid(d, v) for d, v in graph.opsets.items()])


def _ints_of(array: np.ndarray | None) -> list[int] | None:
    if array is None or array.dtype.kind not in "iu" or array.ndim > 1 or array.size > 64:
        return None
    return [int(v) for v in array.reshape(-1)]


def _broadcast(shapes: list[tuple]) -> tuple | None:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _fold_elements(graph: Graph, node: Node, inputs: list[str]) -> int | None:
    """An upper estimate of the elements of the largest output of folding ``node``, before it is evaluated;
    None when folding it is not safe to try (its output cannot be bounded, or it would loop too long)."""
    consts = [graph.value(i).const if i else None for i in node.inputs]
    shapes = [tuple(c.shape) for c in consts if c is not None]
    estimates = [int(np.prod(s, dtype=object)) for s in shapes] or [1]
    for out in node.outputs:
        static = known(graph.value(out).shape) if out else None
        if static is not None:
            estimates.append(int(np.prod(static, dtype=object)))
    broadcast = _broadcast(shapes)
    if broadcast is None and node.op_type in ("Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Sum",
                                              "Mean", "Equal", "Less", "Greater", "And", "Or", "Xor", "Mod"):
        return None  # shapes that do not broadcast: evaluation fails anyway
    if broadcast is not None:
        estimates.append(int(np.prod(broadcast, dtype=object)))
    op = node.op_type
    first = consts[0] if consts else None
    second = _ints_of(consts[1]) if len(consts) > 1 else None
    if op == "ConstantOfShape":
        dims = _ints_of(first)
        if dims is None or any(d < 0 for d in dims):
            return None
        estimates.append(int(np.prod(dims, dtype=object)))
    elif op == "Expand":
        target = _broadcast([tuple(first.shape), tuple(second)]) if second is not None and min(second, default=0) >= 0 \
            else None
        if target is None:
            return None
        estimates.append(int(np.prod(target, dtype=object)))
    elif op == "Tile":
        if second is None or min(second, default=0) < 0:
            return None
        estimates.append(int(np.prod(first.shape, dtype=object)) * int(np.prod(second, dtype=object)))
    elif op == "Range":
        try:
            start, limit, delta = (float(c.reshape(-1)[0]) for c in consts[:3])
            count = max(0, int(np.ceil((limit - start) / delta)))
        except Exception:
            return None
        estimates.append(count)
    elif op in ("MatMul", "Gemm") and len(shapes) >= 2 and len(shapes[0]) >= 1 and len(shapes[1]) >= 1:
        a, b = shapes[0], shapes[1]
        if op == "Gemm" and len(a) == 2 and len(b) == 2:
            rows = a[1] if node.attrs.get("transA") else a[0]
            cols = b[0] if node.attrs.get("transB") else b[1]
            estimates.append(rows * cols)
        else:
            batch = _broadcast([a[:-2], b[:-2]]) or ()
            estimates.append(int(np.prod(batch, dtype=object)) * (a[-2] if len(a) > 1 else 1) * (b[-1] if len(b) > 1 else 1))
    elif op in ("Gather", "GatherElements", "GatherND", "OneHot") and len(shapes) >= 2:
        depth = _ints_of(consts[1]) if op == "OneHot" else None
        extra = int(np.prod(shapes[0], dtype=object)) if op != "OneHot" else max(depth or [1 << 62])
        estimates.append(int(np.prod(shapes[1], dtype=object)) * max(extra, 1))
    elif op == "Pad":
        pads = second if node.opset >= 11 else list(node.attrs.get("pads", node.attrs.get("paddings", [])))
        axes = _ints_of(consts[3]) if len(consts) > 3 and consts[3] is not None else list(range(first.ndim))
        if pads is None or axes is None or len(pads) != 2 * len(axes):
            return None
        dims = list(first.shape)
        for a, lo, hi in zip(axes, pads[:len(axes)], pads[len(axes):]):
            if not -first.ndim <= a < first.ndim:
                return None
            dims[a] += lo + hi
        estimates.append(int(np.prod([max(d, 0) for d in dims], dtype=object)))
    elif op in ("Resize", "Upsample"):
        sizes = _ints_of(consts[3]) if len(consts) > 3 else None
        scales = next((c for c in reversed(consts[1:3]) if c is not None and c.size and c.dtype.kind == "f"), None)
        if op == "Upsample" and scales is None and "scales" in node.attrs:
            scales = np.asarray(node.attrs["scales"], dtype=np.float64)
        if sizes:
            estimates.append(int(np.prod(sizes, dtype=object)))
        elif scales is not None and scales.size == first.ndim and np.all(np.isfinite(scales)):
            estimates.append(int(np.prod([np.ceil(d * float(f)) for d, f in zip(first.shape, scales.reshape(-1))])))
        else:
            return None
    elif op == "Einsum":
        equation = str(node.attrs.get("equation", "")).replace(" ", "")
        if "->" not in equation or "." in equation:
            return None
        terms, result = equation.split("->")
        sizes: dict[str, int] = {}
        for term, shape in zip(terms.split(","), shapes):
            sizes.update(zip(term, shape))
        if any(letter not in sizes for letter in result):
            return None
        estimates.append(int(np.prod([sizes[letter] for letter in result], dtype=object)))
    elif op in ("HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix"):
        values = [_ints_of(c.reshape(-1)) if c is not None else None for c in consts[:2]]
        if any(v is None or not v for v in values[: 2 if op == "MelWeightMatrix" else 1]):
            return None
        count = values[0][0] if op != "MelWeightMatrix" else values[0][0] * (values[1][0] // 2 + 1)
        estimates.append(max(count, 0))
    elif op in ("Col2Im", "CenterCropPad", "MaxUnpool"):
        static = [known(graph.value(o).shape) for o in node.outputs if o]
        if not static or any(s is None for s in static):
            return None  # their output size follows from values we do not model here
    elif op in ("Loop", "Scan"):
        trip = _ints_of(first) if op == "Loop" else [max((s[0] for s in shapes if s), default=0)]
        if not trip or trip[0] > _MAX_FOLDED_ITERATIONS:
            return None
    elif op == "SequenceMap" or any(isinstance(v, onnx.GraphProto) for v in node.attrs.values()):
        pass  # If and other subgraph ops: their outputs are bounded by the static shapes above, when known
    if op in _SLOW and max(estimates) > _SLOW_ELEMENTS:
        return None
    return max(estimates)


def fold_constants(graph: Graph) -> None:
    """Evaluate nodes whose inputs are all constants with onnx's reference implementation.

    Folding stays within the memory budget (:func:`zoo.convert.checks.memory_budget`): a node whose output
    could be larger than what is left of it, as far as its inputs, attributes and inferred shapes tell before
    evaluating it, is left to run time instead (so a folding bomb costs nothing at conversion)."""
    left = memory_budget()
    kept = []
    for node in graph.nodes:
        if node.op_type in ("Shape", "Size") and node.domain == "" and node.inputs:
            static = _static_shape(graph.value(node.inputs[0]))
            if static is not None and graph.value(node.inputs[0]).const is None:
                dims = np.array(static, dtype=np.int64)
                if node.op_type == "Size":
                    dims = np.array(int(np.prod(dims)), dtype=np.int64)
                else:
                    dims = dims[node.attrs.get("start", 0): node.attrs.get("end", len(dims))]
                set_const(graph, node.outputs[0], dims)
                continue
        inputs = [i for i in node.inputs if i]
        if (node.domain != "" or node.op_type in _NOT_FOLDABLE or node.proto is None
                or not all(graph.value(i).const is not None for i in inputs)
                or sum(graph.value(i).const.size for i in inputs) > _MAX_FOLDED_ELEMENTS):
            kept.append(node)
            continue
        elements = _fold_elements(graph, node, inputs)
        itemsize = max([graph.value(i).const.dtype.itemsize for i in inputs] + [8])
        if elements is None or elements * itemsize > left:
            kept.append(node)  # too big (or unbounded) to fold within the budget: computed at run time
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = ReferenceEvaluator(_single_node_model(graph, node, inputs)).run(
                    None, {i: graph.value(i).const for i in inputs})
        except Exception:
            kept.append(node)  # left for the handler to do at run time
            continue
        for name, array in zip(node.outputs, results):
            if name:
                set_const(graph, name, np.asarray(array))
                left -= np.asarray(array).nbytes
    graph.nodes = kept

