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
