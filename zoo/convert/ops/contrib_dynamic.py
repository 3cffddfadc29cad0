"""onnxruntime's dynamically quantized ops (com.microsoft): DynamicQuantizeLSTM, DynamicQuantizeMatMul and
MatMulIntegerToFloat, with its integer semantics.

What ``quantize_dynamic`` leaves, and what onnxruntime's graph optimizer fuses it into. Activations are
quantized to uint8 at run time over their whole tensor, [min(x, 0), max(x, 0)] in 255 steps; products are
summed exactly (integers held in float64, exact far beyond int32's range), then converted to float32 and
multiplied once by activation scale x weight scale, the order in which onnxruntime computes. The LSTM
quantizes its whole input sequence once and its hidden state at every step, as onnxruntime does when it
runs one batch chunk (batch 1, or one intra-op thread). ``dequantize=True`` turns all three into float
layers first (``quantized.dequantize_dynamic``).
"""
from __future__ import annotations

import numpy as np

from ..errors import Unsupported
from ..lower import Multi
from ..registry import register_op
from .integer import DYNAMIC_QUANTIZE
from .ort_math import ORT_SIGMOID, ORT_TANH

INTEGER_MATMUL = '''
def integer_matmul(a, a_scale, a_zero, b, b_scale, b_zero=None, bias=None):
    # onnxruntime's quantized GEMM: exact integer products, one float32 product by a_scale * b_scale, then bias.
    centred_a = a.to(torch.float64) - a_zero.to(torch.float64)
    centred_b = b.to(torch.float64) if b_zero is None else b.to(torch.float64) - b_zero.to(torch.float64)
    y = torch.matmul(centred_a, centred_b).to(torch.float32) * (a_scale * b_scale)
    return y if bias is None else y + bias
'''

DYNAMIC_MATMUL = '''
def dynamic_quantized_matmul(x, b, b_scale, b_zero=None, bias=None):
    # x quantized to uint8 over the whole tensor at run time, then the integer GEMM.
    q, scale, zero = dynamic_quantize_linear(x)
    return integer_matmul(q, scale, zero, b, b_scale, b_zero, bias)
'''

DYNAMIC_LSTM = '''
def dynamic_quantized_lstm(x, w, r, b, w_scale, w_zero, r_scale, r_zero, h0=None, c0=None, p=None, *,
                           directions=("forward",), clip=None, input_forget=False):
    # onnxruntime's DynamicQuantizeLSTM: W and R int8 of shape [directions, in, 4 * hidden], gates i, o, f, c;
    # the whole input quantized once, the hidden state at every step; bias Wb + Rb added after both products;
    # onnxruntime's own sigmoid and tanh, since the next step rounds the hidden state to integers again.
    steps, batch = x.shape[0], x.shape[1]
    hidden = r.shape[1]
    qx, x_scale, x_zero = dynamic_quantize_linear(x.reshape(steps * batch, -1))
    ys, hs, cs = [], [], []
    for d, direction in enumerate(directions):
        xw = integer_matmul(qx, x_scale, x_zero, w[d], w_scale[d], w_zero[d]).reshape(steps, batch, -1)
        bias = None if b is None else b[d, :4 * hidden] + b[d, 4 * hidden:]
        state = x.new_zeros(batch, hidden) if h0 is None else h0[d]
        cell = x.new_zeros(batch, hidden) if c0 is None else c0[d]
        pi, po, pf = (None, None, None) if p is None else p[d].chunk(3)
        out = [None] * steps
        for t in (range(steps - 1, -1, -1) if direction == "reverse" else range(steps)):
            qh, h_scale, h_zero = dynamic_quantize_linear(state)
            gates = xw[t] + integer_matmul(qh, h_scale, h_zero, r[d], r_scale[d], r_zero[d])
            gi, go, gf, gc = gates.chunk(4, 1)
            bi, bo, bf, bc = (None,) * 4 if bias is None else bias.chunk(4)

            def pre(g, g_bias, peephole):
                g = g if peephole is None else g + peephole * cell
                g = g if g_bias is None else g + g_bias
                return g if clip is None else g.clamp(-clip, clip)

            i = onnxruntime_sigmoid(pre(gi, bi, pi))
            f = 1 - i if input_forget else onnxruntime_sigmoid(pre(gf, bf, pf))
            cell = cell * f + i * onnxruntime_tanh(pre(gc, bc, None))
            state = onnxruntime_sigmoid(pre(go, bo, po)) * onnxruntime_tanh(cell)
            out[t] = state
        ys.append(torch.stack(out))
        hs.append(state)
        cs.append(cell)
    return torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)
'''

_DIRECTIONS = {"forward": ("forward",), "reverse": ("reverse",), "bidirectional": ("forward", "reverse")}


def _per_direction(ctx, i: int, directions: int) -> str:
    """A scale or zero point as [directions, 1 or 4 * hidden]: per direction, per tensor or per column.
    onnxruntime reads one zero point per direction (the first), so a per-column zero point must be uniform."""
    shape = ctx.shape(i)
    if shape is None:
        raise Unsupported(f"input {i} has an unknown shape")
    value = ctx.x(i)
    c = ctx.const(i)
    if i in (9, 11) and c is not None and c.ndim == 2 and c.shape[1] > 1:
        if np.any(c != c[:, :1]):
            raise Unsupported("per-column weight zero points that differ (onnxruntime reads the first)")
        value = f"{value}[:, :1]"
    elif len(shape) == 1:
        value = f"{value}.reshape({directions}, 1)"
    elif not shape:
        value = f"{value}.reshape(1, 1).expand({directions}, 1)"
    return value


@register_op("DynamicQuantizeLSTM", domain="com.microsoft", since=1)
def dynamic_quantize_lstm(ctx):
    direction = ctx.attr("direction", "forward")
    if direction not in _DIRECTIONS:
        raise Unsupported(f"direction {direction!r}")
    directions = len(_DIRECTIONS[direction])
    acts = list(ctx.attr("activations") or [])
    if acts and acts != ["Sigmoid", "Tanh", "Tanh"] * directions:
        raise Unsupported(f"activations {acts}")
    if ctx.has_input(4):
        lens, seq = ctx.const(4), (ctx.shape(0) or [None])[0]
        if lens is None or not isinstance(seq, int) or np.any(lens != seq):
            raise Unsupported("sequence_lens that may differ from the sequence length")
    for i in (1, 2):
        dtype = ctx.dtype(i)
        if dtype is None or dtype.name not in ("int8", "uint8"):
            raise Unsupported(f"weights of type {dtype}")
    for i in (8, 9, 10, 11):
        if not ctx.has_input(i):
            raise Unsupported(f"input {i} (a weight scale or zero point) is missing")
    ctx.helper("dynamic_quantize_linear", DYNAMIC_QUANTIZE)
    ctx.helper("integer_matmul", INTEGER_MATMUL)
    ctx.helper("onnxruntime_sigmoid", ORT_SIGMOID)
    ctx.helper("onnxruntime_tanh", ORT_TANH)
    fn = ctx.helper("dynamic_quantized_lstm", DYNAMIC_LSTM)
    args = [ctx.x(0), ctx.x(1), ctx.x(2), ctx.x(3) if ctx.has_input(3) else "None"]
    args += [_per_direction(ctx, i, directions) for i in (8, 9, 10, 11)]
    for i, name in ((5, "h0"), (6, "c0"), (7, "p")):
        if ctx.has_input(i):
            args.append(f"{name}={ctx.x(i)}")
    args.append(f"directions=({', '.join(repr(d) for d in _DIRECTIONS[direction])},)")
    if ctx.attr("clip") is not None:
        args.append(f"clip={ctx.lit(np.float32(ctx.attr('clip')))}")
    if ctx.attr("input_forget", 0):
        args.append("input_forget=True")
    expr = f"{fn}({', '.join(args)})"
    n = len(ctx.node.outputs)
    return Multi(f"{expr}[:{n}]") if n > 1 else f"{expr}[0]"


def _weight_vector(ctx, i: int) -> str | None:
    """A weight scale or zero point: per tensor as it stands, per column (N values) along the last axis."""
    if not ctx.has_input(i):
        return None
    c = ctx.const(i)
    if c is not None and c.size == 1:
        return f"{ctx.x(i)}.reshape(())"
    return ctx.x(i)


def _integer_weight(ctx, i: int) -> None:
    dtype = ctx.dtype(i)
    if dtype is None or dtype.name not in ("int8", "uint8"):
        raise Unsupported(f"input {i} of type {dtype}; onnxruntime takes int8 or uint8")


@register_op("DynamicQuantizeMatMul", domain="com.microsoft", since=1)
def dynamic_quantize_matmul(ctx):
    _integer_weight(ctx, 1)
    ctx.helper("dynamic_quantize_linear", DYNAMIC_QUANTIZE)
    ctx.helper("integer_matmul", INTEGER_MATMUL)
    fn = ctx.helper("dynamic_quantized_matmul", DYNAMIC_MATMUL)
    args = [ctx.x(0), ctx.x(1), _weight_vector(ctx, 2)]
    zero, bias = _weight_vector(ctx, 3), ctx.x(4) if ctx.has_input(4) else None
    if zero:
        args.append(f"b_zero={zero}")
    if bias:
        args.append(f"bias={bias}")
    return f"{fn}({', '.join(args)})"


@register_op("MatMulIntegerToFloat", domain="com.microsoft", since=1)
def matmul_integer_to_float(ctx):
    _integer_weight(ctx, 1)
    fn = ctx.helper("integer_matmul", INTEGER_MATMUL)
    a_zero = ctx.x(4) if ctx.has_input(4) else "torch.zeros(())"
    args = [ctx.x(0), _weight_vector(ctx, 2), a_zero, ctx.x(1), _weight_vector(ctx, 3)]
    zero, bias = _weight_vector(ctx, 5), ctx.x(6) if ctx.has_input(6) else None
    if zero:
        args.append(f"b_zero={zero}")
    if bias:
        args.append(f"bias={bias}")
    return f"{fn}({', '.join(args)})"


MATMUL_NBITS = '''
def matmul_nbits(a, packed, scales, zero_points=None, bias=None, *, k, n, bits, block):
    # onnxruntime's MatMulNBits: B is [n, blocks, block * bits / 8] bytes holding k values per column, the
    # lowest bits first; a scale and a zero point (default 2 ** (bits - 1), packed like B if uint8) per
    # column and block. Dequantized, (q - zero) * scale, then an ordinary matmul.
    blocks = packed.shape[1]
    mask = 2 ** bits - 1
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    q = ((packed.unsqueeze(-1) >> shifts) & mask).reshape(n, blocks, block)
    if zero_points is None:
        zero = torch.full((n, blocks, 1), 2 ** (bits - 1), dtype=scales.dtype, device=scales.device)
    elif zero_points.dtype == torch.uint8:
        zero = ((zero_points.reshape(n, -1, 1) >> shifts) & mask).reshape(n, -1)[:, :blocks].unsqueeze(-1)
    else:
        zero = zero_points.reshape(n, blocks, 1)
    weight = ((q.to(scales.dtype) - zero.to(scales.dtype)) * scales.reshape(n, blocks, 1)).reshape(n, -1)[:, :k]
    return F.linear(a, weight.to(a.dtype), bias)
'''


def nbits_layout(ctx) -> tuple[int, int, int, int]:
    """MatMulNBits' K, N, bits and block_size, checked against what the kernel supports."""
    k, n, bits, block = (int(ctx.attr(a, d)) for a, d in (("K", 0), ("N", 0), ("bits", 4), ("block_size", 0)))
    if bits not in (2, 4, 8):
        raise Unsupported(f"bits={bits} (2, 4 or 8 pack whole values into bytes)")
    if block < 16 or block & (block - 1) or k <= 0 or n <= 0:
        raise Unsupported(f"K={k}, N={n}, block_size={block}")
    return k, n, bits, block


@register_op("MatMulNBits", domain="com.microsoft", since=1)
def matmul_nbits(ctx):
    k, n, bits, block = nbits_layout(ctx)
    if ctx.has_input(4):
        raise Unsupported("g_idx (act-order); onnxruntime's CPU kernel ignores it only for trivial orders")
    fn = ctx.helper("matmul_nbits", MATMUL_NBITS)
    args = [ctx.x(0), ctx.x(1), ctx.x(2)]
    if ctx.has_input(3):
        args.append(f"zero_points={ctx.x(3)}")
    if ctx.has_input(5):
        args.append(f"bias={ctx.x(5)}")
    args += [f"k={k}", f"n={n}", f"bits={bits}", f"block={block}"]
    return f"{fn}({', '.join(args)})"
