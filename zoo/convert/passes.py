"""Stage 3: small graph rewrites, each a function of the Graph, run in order by :func:`run_passes`."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from .checks import known, memory_budget
from .errors import ConversionError
from .ir import BATCH, Graph, Node, Value

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


def cut_at(graph: Graph, outputs: list[str] | None) -> None:
    """Make ``outputs`` the graph's outputs (e.g. the logits before a final Softmax)."""
    if not outputs:
        return
    known = set(graph.inputs) | {o for n in graph.nodes for o in n.outputs} | \
        {name for name, v in graph.values.items() if v.const is not None}
    missing = [o for o in outputs if o not in known]
    if missing:
        sample = ", ".join(repr(o) for o in graph.outputs[:3])
        raise ConversionError(f"{graph.where()}: no tensor named {', '.join(map(repr, missing))} to cut at "
                              f"(graph outputs are {sample}; `layers()` lists every tensor)")
    graph.outputs = list(outputs)


def drop_dead_nodes(graph: Graph) -> None:
    needed = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.outputs if o):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    graph.nodes = list(reversed(kept))


def _set_const(graph: Graph, name: str, array: np.ndarray) -> None:
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
                _set_const(graph, node.outputs[0], dims)
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
                _set_const(graph, name, np.asarray(array))
                left -= np.asarray(array).nbytes
    graph.nodes = kept


_QUANT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}


def _dequantized(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    """ONNX DequantizeLinear of a constant, in numpy: (x - zero) * scale, the difference taken in integers."""
    rank = x.ndim
    axis = axis % rank if rank else 0
    if zero is not None and zero.shape != scale.shape and not zero.size == scale.size == 1:
        raise ValueError("the zero point's shape differs from the scale's")
    if block and (scale.ndim != rank or scale.shape[axis] != -(-x.shape[axis] // block)
                  or any(s != d for i, (s, d) in enumerate(zip(scale.shape, x.shape)) if i != axis)):
        raise ValueError(f"blocks of {block} along axis {axis} need a scale of {-(-x.shape[axis] // block)} there")
    if not block and scale.size > 1 and (scale.ndim != 1 or scale.size != x.shape[axis]):
        raise ValueError(f"a per-axis scale needs {x.shape[axis]} values")

    def along(c: np.ndarray) -> np.ndarray:
        if block:
            return np.repeat(c, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        if c.size == 1:
            return c.reshape(())
        return c.reshape((-1,) + (1,) * (rank - 1 - axis))

    centred = x.astype(np.int64) - (along(zero).astype(np.int64) if zero is not None else 0)
    return (centred.astype(np.float32) * along(scale).astype(np.float32)).astype(scale.dtype)


def fold_dequantized_weights(graph: Graph) -> None:
    """DequantizeLinear of a constant integer tensor (a QDQ graph's weights and biases, per tensor, per axis
    or blocked) becomes that float constant, so the Conv or Gemm after it is an ordinary float layer.
    Done here rather than by fold_constants, which leaves weights over 2^26 elements to run time."""
    kept = []
    for node in graph.nodes:
        consts = [graph.value(i).const if i else None for i in node.inputs]
        if node.op_type != "DequantizeLinear" or node.domain or len(consts) < 2 or consts[0] is None \
                or consts[1] is None or (len(consts) > 2 and node.inputs[2] and consts[2] is None) \
                or consts[0].dtype.kind not in "iu" or consts[1].dtype.kind != "f" \
                or node.attrs.get("output_dtype", 0):
            kept.append(node)
            continue
        x, scale, zero = consts[0], consts[1], consts[2] if len(consts) > 2 else None
        block = int(node.attrs.get("block_size", 0) or 0)
        per_axis = block or scale.size > 1
        axis = int(node.attrs.get("axis", 1))
        try:
            if per_axis and not -x.ndim <= axis < x.ndim:
                raise ValueError(f"axis={axis} for rank {x.ndim}")
            array = _dequantized(x, scale, zero, axis, block)
        except ValueError as exc:
            raise ConversionError(f"{graph.where(node)}: scale {scale.shape}, zero point "
                                  f"{None if zero is None else zero.shape} and attributes axis={axis}, "
                                  f"block_size={block} do not fit the input {x.shape} ({exc})") from None
        _set_const(graph, node.outputs[0], array)
    graph.nodes = kept


def fuse_fake_quantize(graph: Graph) -> None:
    """QuantizeLinear -> DequantizeLinear on a float32 activation, with the same constant scale and zero point
    (a QDQ graph's activations), becomes one ``FakeQuantize`` node: torch.fake_quantize_*_affine, whose
    gradient passes straight through, so the model can be fine-tuned quantization-aware."""
    producer = graph.producer_of()
    for i, node in enumerate(graph.nodes):
        q = producer.get(node.inputs[0]) if node.op_type == "DequantizeLinear" and not node.domain else None
        if q is None or q.op_type != "QuantizeLinear" or q.domain or len(q.inputs) < 3 or len(node.inputs) < 3 \
                or q.attrs.get("block_size") or node.attrs.get("block_size"):
            continue
        qs, qz = graph.value(q.inputs[1]).const, graph.value(q.inputs[2]).const
        ds, dz = graph.value(node.inputs[1]).const, graph.value(node.inputs[2]).const
        x = graph.value(q.inputs[0])
        if any(c is None for c in (qs, qz, ds, dz)) or x.dtype != np.float32 or qs.dtype != np.float32 \
                or qz.dtype.name not in _QUANT_RANGES or graph.value(node.outputs[0]).dtype not in (None, np.float32):
            continue
        if not (np.array_equal(qs, ds) and np.array_equal(qz, dz) and qz.dtype == dz.dtype and qs.shape == qz.shape
                and qs.ndim <= 1 and np.all(qs > 0)):
            continue
        if qs.size > 1 and int(q.attrs.get("axis", 1)) != int(node.attrs.get("axis", 1)):
            continue
        low, high = _QUANT_RANGES[qz.dtype.name]
        graph.nodes[i] = Node("FakeQuantize", "zoo", node.name, [q.inputs[0], node.inputs[1], node.inputs[2]],
                              list(node.outputs), {"axis": int(node.attrs.get("axis", 1)), "quant_min": low,
                                                   "quant_max": high}, 1)


def dequantize_activations(graph: Graph) -> None:
    """``dequantize=True``: a plain float model. Fake quantization becomes a clamp to its range: rounding goes,
    the range stays, since the quantizer folds ReLU and ReLU6 into it. Approximate by the rounding."""
    for i, node in enumerate(graph.nodes):
        if node.op_type != "FakeQuantize" or node.domain != "zoo":
            continue
        scale, zero = graph.value(node.inputs[1]).const, graph.value(node.inputs[2]).const.astype(np.float32)
        if scale.size != 1:
            graph.nodes[i] = Node("Identity", "", node.name, node.inputs[:1], list(node.outputs), {}, 14)
            continue
        bounds = []
        for end in ("min", "max"):
            name = f"{node.outputs[0]}_{end}"
            _set_const(graph, name, ((np.float32(node.attrs[f"quant_{end}"]) - zero) * scale).reshape(()))
            bounds.append(name)
        graph.nodes[i] = Node("Clip", "", node.name, [node.inputs[0]] + bounds, list(node.outputs), {}, 13)
    forward_identities(graph)


def forward_identities(graph: Graph) -> None:
    """Consumers of an Identity read its input directly (torch.onnx.export aliases weights this way)."""
    outputs = set(graph.outputs)
    alias: dict[str, str] = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [alias.get(i, i) for i in node.inputs]
        if node.op_type == "Identity" and node.outputs[0] not in outputs:
            alias[node.outputs[0]] = node.inputs[0]
        else:
            kept.append(node)
    graph.nodes = kept


def _per_channel(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """c as a length-``channels`` vector if it broadcasts along axis 1 of a rank-``rank`` tensor only."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(c.dtype)


def fuse_batchnorm_scale(graph: Graph) -> None:
    """Caffe2's BatchNormalization followed by per-channel Mul and Add becomes one affine BatchNorm."""
    users = graph.consumers()
    removed: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "BatchNormalization" or len([o for o in node.outputs if o]) != 1:
            continue
        scale_name, bias_name = node.inputs[1], node.inputs[2]
        scale, bias = graph.value(scale_name).const, graph.value(bias_name).const
        rank = graph.value(node.inputs[0]).rank
        if scale is None or bias is None or rank is None or len(users.get(scale_name, [])) != 1 \
                or len(users.get(bias_name, [])) != 1 or scale_name == bias_name:
            continue
        scale, bias = scale.copy(), bias.copy()
        out = node.outputs[0]
        for op in ("Mul", "Add"):
            nxt = users.get(out, [])
            if len(nxt) != 1 or nxt[0].op_type != op or out in graph.outputs:
                break
            follower = nxt[0]
            other = follower.inputs[1] if follower.inputs[0] == out else follower.inputs[0]
            c = graph.value(other).const
            vec = _per_channel(c, rank, scale.shape[0]) if c is not None else None
            if vec is None:
                break
            if op == "Mul":
                scale, bias = scale * vec, bias * vec
            else:
                bias = bias + vec
            removed.add(id(follower))
            node.outputs = list(follower.outputs)
            out = node.outputs[0]
        _set_const(graph, scale_name, scale)
        _set_const(graph, bias_name, bias)
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def _const_scalar(graph: Graph, name: str) -> float | None:
    c = graph.value(name).const
    return float(c.reshape(-1)[0]) if c is not None and c.size == 1 and c.dtype.kind == "f" else None


def _other_input(node: Node, name: str) -> str:
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def fuse_linear_bias(graph: Graph) -> None:
    """MatMul by a constant matrix followed by Add of a constant vector is one nn.Linear with bias."""
    users = graph.consumers()
    removed: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "MatMul" or node.domain or len(node.inputs) != 2:
            continue
        weight = graph.value(node.inputs[1]).const
        out = node.outputs[0]
        nxt = users.get(out, [])
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or len(nxt) != 1 \
                or nxt[0].op_type != "Add" or out in graph.outputs:
            continue
        bias_name = _other_input(nxt[0], out)
        bias = graph.value(bias_name).const
        if bias is None or bias.shape != (weight.shape[1],):
            continue
        graph.nodes[graph.nodes.index(node)] = Node("Linear", "zoo", node.name, [node.inputs[0], node.inputs[1], bias_name],
                                                    list(nxt[0].outputs), {}, 1)
        removed.add(id(nxt[0]))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def fuse_gelu(graph: Graph) -> None:
    """torch.onnx.export's exact GELU, x * (erf(x / sqrt(2)) + 1) * 0.5, back to one GELU."""
    users = graph.consumers()
    producer = graph.producer_of()
    removed: set[int] = set()
    for erf in graph.nodes:
        if erf.op_type != "Erf" or erf.inputs[0] not in producer:
            continue
        div = producer[erf.inputs[0]]
        if div.op_type != "Div" or abs((_const_scalar(graph, div.inputs[1]) or 0) - 2 ** 0.5) > 1e-3:
            continue
        x = div.inputs[0]
        def only_user(node: Node, op: str) -> Node | None:
            found = users.get(node.outputs[0], [])
            return found[0] if len(found) == 1 and found[0].op_type == op else None

        add = only_user(erf, "Add")
        if add is None or _const_scalar(graph, _other_input(add, erf.outputs[0])) != 1.0:
            continue
        mul = only_user(add, "Mul")
        if mul is None or _other_input(mul, add.outputs[0]) != x:
            continue
        half = only_user(mul, "Mul")
        if half is None or _const_scalar(graph, _other_input(half, mul.outputs[0])) != 0.5 or \
                len(users.get(div.outputs[0], [])) != 1:
            continue
        graph.nodes[graph.nodes.index(half)] = Node("Gelu", "", half.name, [x], list(half.outputs), {}, 20)
        removed.update(id(n) for n in (div, erf, add, mul))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


_KEEPS_DIM0 = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Clip", "HardSigmoid", "HardSwish", "Softplus",
    "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Erf", "Identity",
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN",
    "BatchNormalization", "InstanceNormalization", "Dropout", "Cast", "Softmax", "LogSoftmax", "Flatten",
}


def _keeps_dim0(node: Node) -> bool:
    if node.op_type == "Transpose":
        return bool(node.attrs.get("perm")) and node.attrs["perm"][0] == 0
    if node.op_type in ("Concat", "Split"):
        return node.attrs.get("axis", 0) != 0
    if node.op_type == "Gemm":
        return not node.attrs.get("transA", 0)
    if node.op_type == "Flatten":
        return node.attrs.get("axis", 1) != 0
    return node.op_type in _KEEPS_DIM0


def generalize_batch(graph: Graph) -> None:
    """A Reshape to a constant ``[1, ...]`` of a per-sample tensor keeps the batch dimension instead.

    Which tensors carry the batch in dimension 0 is propagated forward from the inputs, so a chain such as
    ShuffleNet's reshape -> transpose -> reshape generalizes as a whole.
    """
    batched = {name for name in graph.inputs if (graph.value(name).shape or (None,))[0] == BATCH}
    for i, node in enumerate(graph.nodes):
        runtime = [n for n in node.inputs if n and graph.value(n).const is None]
        if node.op_type == "Reshape" and len(node.inputs) >= 2 and node.inputs[0] in batched:
            _generalize_reshape(graph, i, node)
            if (graph.value(node.outputs[0]).shape or (None,))[0] == BATCH or graph.nodes[i] is not node:
                batched.add(node.outputs[0])
            continue
        out = graph.value(node.outputs[0]) if node.outputs else None
        if out is not None and runtime and runtime[0] in batched and _keeps_dim0(node):
            batched.add(out.name)
            if out.shape:
                out.shape = (BATCH,) + tuple(out.shape[1:])
        elif out is not None and (out.shape or (None,))[0] == BATCH:
            batched.add(out.name)


def _generalize_reshape(graph: Graph, i: int, node: Node) -> None:
    target = graph.value(node.inputs[1]).const
    data = graph.value(node.inputs[0])
    if target is None or target.ndim != 1 or not len(target) or int(target[0]) != 1 or data.shape is None:
        return
    if not all(isinstance(d, int) for d in data.shape[1:]):
        return
    per_sample = int(np.prod(data.shape[1:]))
    rest = [int(d) for d in target[1:]]
    if -1 not in rest and 0 not in rest and int(np.prod(rest)) != per_sample:
        return
    out = graph.value(node.outputs[0])
    if len(target) == 2:
        graph.nodes[i] = Node("Flatten", "", node.name, [node.inputs[0]], node.outputs, {"axis": 1},
                              max(node.opset, 1))
    else:
        name = node.inputs[1] + "_batch"
        _set_const(graph, name, np.array([0] + rest, dtype=np.int64))
        node.inputs = [node.inputs[0], name]
        node.attrs.pop("allowzero", None)
    out.shape = (BATCH,) + tuple(out.shape[1:]) if out.shape else (BATCH,)


def _sole_user(users: dict[str, list[Node]], graph: Graph, name: str, op: str) -> Node | None:
    found = users.get(name, [])
    ok = len(found) == 1 and found[0].op_type == op and not found[0].domain and name not in graph.outputs
    return found[0] if ok else None


def fuse_channel_shuffle(graph: Graph) -> None:
    """ShuffleNet's channel shuffle, Reshape (N, C, H, W) -> (N, g, C/g, H, W), Transpose (0, 2, 1, 3, 4),
    Reshape -> (N, C, H, W), becomes one ``ChannelShuffle`` node: it reads as a shuffle and works at any
    batch and image size. Runs after generalize_batch, so a batch copied with 0 is accepted."""
    users = graph.consumers()
    removed: set[int] = set()
    for i, first in enumerate(graph.nodes):
        if first.op_type != "Reshape" or first.domain or len(first.inputs) < 2 or first.attrs.get("allowzero"):
            continue
        shape = graph.value(first.inputs[0]).shape
        split = graph.value(first.inputs[1]).const
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or split is None or split.shape != (5,):
            continue
        n, groups, per_group, h, w = (int(d) for d in split)
        if n not in (0, shape[0]) or groups < 1 or per_group < 1 or groups * per_group != shape[1] \
                or [h, w] != list(shape[2:]):
            continue
        swap = _sole_user(users, graph, first.outputs[0], "Transpose")
        if swap is None or list(swap.attrs.get("perm", [])) != [0, 2, 1, 3, 4]:
            continue
        last = _sole_user(users, graph, swap.outputs[0], "Reshape")
        merge = graph.value(last.inputs[1]).const if last is not None and len(last.inputs) > 1 else None
        if merge is None or merge.shape != (4,) or last.attrs.get("allowzero"):
            continue
        if int(merge[0]) not in (0, shape[0]) or int(merge[1]) not in (-1, shape[1]) or \
                [int(d) for d in merge[2:]] != list(shape[2:]):
            continue
        graph.nodes[i] = Node("ChannelShuffle", "zoo", first.name, [first.inputs[0]], list(last.outputs),
                              {"groups": groups}, 1)
        removed.update((id(swap), id(last)))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
def adapt_global_pool(graph: Graph) -> None:
    """An AveragePool or MaxPool whose window covers the whole unpadded feature map becomes the global
    pool: the same numbers at the traced size, and adaptive (any input size) in the generated code."""
    for node in graph.nodes:
        if node.op_type not in ("AveragePool", "MaxPool") or len(node.outputs) != 1:
            continue
        shape = graph.value(node.inputs[0]).shape
        kernel = list(node.attrs.get("kernel_shape", []))
        if shape is None or len(shape) < 3 or list(shape[2:]) != kernel or any(node.attrs.get("pads", [])) \
                or any(d != 1 for d in node.attrs.get("dilations", [1] * len(kernel))) \
                or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            continue
        node.op_type = "GlobalAveragePool" if node.op_type == "AveragePool" else "GlobalMaxPool"
        node.attrs = {}


def run_passes(graph: Graph, outputs: list[str] | None = None) -> Graph:
    cut_at(graph, outputs)
    drop_dead_nodes(graph)
    fold_dequantized_weights(graph)
    fold_constants(graph)
    forward_identities(graph)
    fuse_fake_quantize(graph)
    fuse_batchnorm_scale(graph)
    fuse_linear_bias(graph)
    fuse_gelu(graph)
    generalize_batch(graph)
    fuse_channel_shuffle(graph)
    drop_dead_nodes(graph)
    return graph


__all__ = ["run_passes", "cut_at", "drop_dead_nodes", "fold_constants", "forward_identities",
           "fold_dequantized_weights", "fuse_fake_quantize", "dequantize_activations",
           "fuse_batchnorm_scale", "generalize_batch", "fuse_channel_shuffle"]
