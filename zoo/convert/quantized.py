"""Passes for quantized graphs (QDQ format): constant weights dequantized once, activation Q/DQ pairs as
fake quantization, and ``dequantize=True``'s plain float model (run forward_identities after it)."""
from __future__ import annotations

import numpy as np

from .errors import ConversionError
from .folding import set_const
from .ir import Graph, Node

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
        set_const(graph, node.outputs[0], array)
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
            set_const(graph, name, ((np.float32(node.attrs[f"quant_{end}"]) - zero) * scale).reshape(()))
            bounds.append(name)
        graph.nodes[i] = Node("Clip", "", node.name, [node.inputs[0]] + bounds, list(node.outputs), {}, 13)


# Ops that quantize a float activation at run time: where they are, onnxruntime's exact Sigmoid and Tanh
# matter. (QDQ graphs are another matter: onnxruntime runs their DQ -> op -> Q groups as QLinear ops.)
_ROUNDING_OPS = {("", "DynamicQuantizeLinear"), ("com.microsoft", "DynamicQuantizeMatMul"),
                 ("com.microsoft", "DynamicQuantizeLSTM")}
_ORT_MATH = {"Sigmoid": "OnnxruntimeSigmoid", "Tanh": "OnnxruntimeTanh"}


def match_onnxruntime_rounding(graph: Graph) -> None:
    """In a graph that quantizes activations dynamically, float32 Sigmoid and Tanh compute as onnxruntime does,
    bit for bit (ops.ort_math): torch's few ulps would move activations near a rounding boundary a whole step."""
    if not any((n.domain, n.op_type) in _ROUNDING_OPS for n in graph.nodes):
        return
    for i, node in enumerate(graph.nodes):
        if node.op_type in _ORT_MATH and not node.domain and graph.value(node.inputs[0]).dtype == np.float32:
            graph.nodes[i] = Node(_ORT_MATH[node.op_type], "zoo", node.name, list(node.inputs), list(node.outputs),
                                  {}, 1)


def restore_float_math(graph: Graph) -> None:
    """``dequantize=True``: torch's Sigmoid and Tanh again (the float model needs no onnxruntime rounding)."""
    back = {v: k for k, v in _ORT_MATH.items()}
    for i, node in enumerate(graph.nodes):
        if node.domain == "zoo" and node.op_type in back:
            graph.nodes[i] = Node(back[node.op_type], "", node.name, list(node.inputs), list(node.outputs), {}, 13)


def _float_weight(graph: Graph, node: Node, q: int, scale: int, zero: int | None) -> np.ndarray | None:
    """A dynamically quantized op's constant integer weight (last axis the output columns) as float32."""
    consts = [graph.value(node.inputs[i]).const if i is not None and i < len(node.inputs) and node.inputs[i]
              else None for i in (q, scale, zero)]
    if consts[0] is None or consts[1] is None or (zero is not None and zero < len(node.inputs)
                                                  and node.inputs[zero] and consts[2] is None):
        return None
    weight, s, z = consts[0].astype(np.int64), consts[1].astype(np.float32), consts[2]
    z = np.zeros((), np.int64) if z is None else z.astype(np.int64)
    return ((weight - z) * s).astype(np.float32)  # a scale of 1 or N values broadcasts along the columns


def _float_linear(graph: Graph, node: Node, x: str, weight: np.ndarray, bias: str | None) -> Node:
    set_const(graph, f"{node.outputs[0]}_weight", weight)
    inputs = [x, f"{node.outputs[0]}_weight"]
    if bias:
        return Node("Linear", "zoo", node.name, inputs + [bias], list(node.outputs), {}, 1)
    return Node("MatMul", "", node.name, inputs, list(node.outputs), {}, 13)


def _input(node: Node, i: int) -> str | None:
    return node.inputs[i] if i < len(node.inputs) and node.inputs[i] else None


def dequantize_dynamic(graph: Graph) -> None:
    """``dequantize=True`` for onnxruntime's dynamically quantized ops: DynamicQuantizeLSTM becomes an ONNX LSTM
    (nn.LSTM), DynamicQuantizeMatMul, MatMulNBits and MatMulIntegerToFloat (of a DynamicQuantizeLinear's
    output) an nn.Linear, each with its constant weights dequantized. Approximate by the rounding they drop. Run
    drop_dead_nodes after it (the quantizers left without users)."""
    producer = graph.producer_of()
    for i, node in enumerate(graph.nodes):
        if node.domain != "com.microsoft":
            continue
        if node.op_type == "DynamicQuantizeLSTM":
            scales = [graph.value(n).const if n else None for n in node.inputs[8:12]]
            if len(scales) < 4 or any(s is None for s in scales) or \
                    any(graph.value(n).const is None for n in node.inputs[1:3]):
                continue
            weights = []
            for q, scale, zero in ((1, 0, 1), (2, 2, 3)):
                w = graph.value(node.inputs[q]).const.astype(np.int64)  # [directions, in, 4 * hidden]
                s = scales[scale].astype(np.float32).reshape(w.shape[0], 1, -1)
                z = scales[zero].astype(np.int64).reshape(w.shape[0], 1, -1)
                weights.append(np.ascontiguousarray(((w - z) * s).astype(np.float32).transpose(0, 2, 1)))
            names = []
            for key, w in zip(("W", "R"), weights):
                names.append(f"{node.outputs[0]}_{key}")
                set_const(graph, names[-1], w)
            inputs = [node.inputs[0]] + names + list(node.inputs[3:8])
            while inputs and not inputs[-1]:
                inputs.pop()
            graph.nodes[i] = Node("LSTM", "", node.name, inputs, list(node.outputs), dict(node.attrs), 14)
        elif node.op_type == "DynamicQuantizeMatMul":
            weight = _float_weight(graph, node, 1, 2, 3)
            if weight is not None and weight.ndim == 2:
                graph.nodes[i] = _float_linear(graph, node, node.inputs[0], weight, _input(node, 4))
        elif node.op_type == "MatMulIntegerToFloat":
            quantizer = producer.get(node.inputs[0])
            weight = _float_weight(graph, node, 1, 3, 5)
            if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear" or weight is None \
                    or weight.ndim != 2 or quantizer.outputs[1:3] != [node.inputs[2], _input(node, 4)]:
                continue
            graph.nodes[i] = _float_linear(graph, node, quantizer.inputs[0], weight, _input(node, 6))
        elif node.op_type == "MatMulNBits" and not _input(node, 4):
            consts = [graph.value(n).const if n else None for n in (node.inputs + [""] * 4)[1:4]]
            if consts[0] is None or consts[1] is None or (_input(node, 3) and consts[2] is None):
                continue
            layout = [int(node.attrs.get(a, 0)) for a in ("K", "N", "bits", "block_size")]
            weight = nbits_weight(consts[0], consts[1], consts[2], *layout).astype(consts[1].dtype)
            graph.nodes[i] = _float_linear(graph, node, node.inputs[0], weight, _input(node, 5))


def nbits_weight(packed: np.ndarray, scales: np.ndarray, zero: np.ndarray | None, k: int, n: int, bits: int,
                 block: int) -> np.ndarray:
    """MatMulNBits' B dequantized to [K, N] float32, as the generated ``matmul_nbits`` does at run time."""
    blocks = packed.shape[1]
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    mask = (1 << bits) - 1
    q = ((packed[..., None] >> shifts) & mask).reshape(n, blocks, block).astype(np.float32)
    if zero is None:
        z = np.full((n, blocks, 1), 2 ** (bits - 1), np.float32)
    elif zero.dtype == np.uint8:
        z = ((zero.reshape(n, -1, 1) >> shifts) & mask).reshape(n, -1)[:, :blocks, None].astype(np.float32)
    else:
        z = zero.reshape(n, blocks, 1).astype(np.float32)
    weight = ((q - z) * scales.reshape(n, blocks, 1).astype(np.float32)).reshape(n, -1)[:, :k]
    return np.ascontiguousarray(weight.T)
