"""QOperator graphs: QLinearConv, QLinearMatMul, QGemm and the com.microsoft QLinear* ops onnxruntime's
quantizer writes, with onnxruntime's integer semantics.

Accumulation is exact (integers held in float64, which is exact far beyond int32's range, because torch has
no integer convolution), then one float32 product by the combined scale, rounded half to even, the zero point
added and saturated: the order in which onnxruntime computes, so results match it element for element.
"""
from __future__ import annotations

import numpy as np

from .. import checks
from ..checks import Contradiction
from ..errors import Unsupported
from ..registry import register_op
from ._util import auto_pads, torch_pad
from .pool import _pool
from .quant import RANGES

SATURATE = '''
def saturate(y, zero_point, low, high, dtype):
    # The last step of every quantized op: round half to even, add the zero point, clamp to the type's range.
    return torch.clamp(torch.round(y) + zero_point, low, high).to(dtype)
'''


def _number(ctx, i: int, *, integer: bool = False) -> str | None:
    """A scalar constant as a literal; None when input ``i`` is absent or a constant zero point of 0."""
    if not ctx.has_input(i):
        return None
    c = ctx.const(i)
    if c is not None and c.size == 1:
        value = c.reshape(())[()]
        if integer or c.dtype.kind in "iu":
            return None if int(value) == 0 else str(int(value))
        return ctx.lit(np.float32(value) if c.dtype == np.float32 else value)
    return ctx.x(i)


def _centred(ctx, i: int, zero: int, *, wide: str = "torch.float64", axis_shape: tuple | None = None) -> str:
    """Input ``i`` minus its zero point ``zero``, in ``wide``; a vector zero point is shaped by ``axis_shape``."""
    x = f"{ctx.x(i)}.to({wide})"
    z = _number(ctx, zero)
    if z is None:
        return x
    if not z.lstrip("-").isdigit():
        z = f"{z}.to({wide})"
        shape = ctx.shape(zero)
        if axis_shape is not None and shape and len(shape) == 1 and shape[0] != 1:
            z = f"{z}.reshape({ctx.lit(axis_shape)})"
    return f"({x} - {z})"


def _multiplier(ctx, scales: list[int], divisor: int, *, shape: tuple | None = None, factor: float = 1.0) -> str:
    """(s0 * s1 * ...) / divisor, in the scales' own precision as onnxruntime computes it; constants folded."""
    consts = [ctx.const(i) for i in scales + [divisor]]
    if all(c is not None and c.size == 1 for c in consts):
        value = consts[0].reshape(())
        for c in consts[1:-1]:
            value = value * c.reshape(())
        if factor != 1.0:
            value = value * value.dtype.type(factor)
        return ctx.lit((value / consts[-1].reshape(()))[()])
    parts = []
    for i in scales:
        s = _number(ctx, i)
        size = ctx.shape(i)
        if shape is not None and size and len(size) == 1 and size[0] != 1:
            s = f"{s}.reshape({ctx.lit(shape)})"
        parts.append(s)
    if factor != 1.0:
        parts.append(ctx.lit(np.float32(factor)))
    return f"({' * '.join(parts)} / {_number(ctx, divisor)})"


def _output(ctx, zero: int, like: int) -> tuple[str, int, int, str]:
    """Zero point literal or tensor, range and torch dtype of the quantized output."""
    dtype = ctx.dtype(zero) if ctx.has_input(zero) else ctx.dtype(like)
    if dtype is None or dtype.name not in RANGES or dtype.name == "int32":
        raise Unsupported(f"a quantized output of type {dtype}")
    low, high = RANGES[dtype.name]
    return _number(ctx, zero) or "0", low, high, ctx.torch_dtype(dtype)


def _saturate(ctx, value: str, zero: int, like: int) -> str:
    fn = ctx.helper("saturate", SATURATE)
    z, low, high, dtype = _output(ctx, zero, like)
    return f"{fn}({value}, {z}, {low}, {high}, {dtype})"


def _integer_conv(ctx, x: str, w: str, bias: str) -> str:
    """F.conv*d of centred integers, with QLinearConv's and ConvInteger's attributes checked."""
    weight_shape = ctx.shape(3 if ctx.op_type == "QLinearConv" else 1)
    if weight_shape is None:
        raise Unsupported("a weight of unknown shape")
    n, kernel, strides, dilations, _ = checks.conv_attrs(ctx, weight_shape)
    begins, ends = auto_pads(ctx, kernel, strides, dilations)
    checks.conv_output(ctx, weight_shape, kernel, strides, dilations, begins, ends)
    if begins != ends:  # zeros here are the zero point: the input is already centred
        x, begins = f"F.pad({x}, {ctx.lit(torch_pad(begins, ends))})", [0] * n
    return (f"F.conv{n}d({x}, {w}, {bias}, stride={ctx.lit(tuple(strides))}, padding={ctx.lit(tuple(begins))}, "
            f"dilation={ctx.lit(tuple(dilations))}, groups={int(ctx.attr('group', 1))})")


@register_op("QLinearConv", since=10)
def qlinear_conv(ctx):
    rank = ctx.rank(0)
    per_channel = (-1,) + (1,) * (rank - 1)
    bias = f"{ctx.x(8)}.to(torch.float64)" if ctx.has_input(8) else "None"
    acc = _integer_conv(ctx, _centred(ctx, 0, 2), _centred(ctx, 3, 5, axis_shape=per_channel), bias)
    scale = _multiplier(ctx, [1, 4], 6, shape=(-1,) + (1,) * (rank - 2))
    return _saturate(ctx, f"{acc}.to(torch.float32) * {scale}", 7, 0)


@register_op("ConvInteger", since=10)
def conv_integer(ctx):
    acc = _integer_conv(ctx, _centred(ctx, 0, 2), _centred(ctx, 1, 3, axis_shape=(-1,) + (1,) * (ctx.rank(1) - 1)),
                        "None")
    return f"{acc}.to(torch.int32)"


def _matmul_acc(ctx, a: int, a_zero: int, b: int, b_zero: int, trans_a: bool = False, trans_b: bool = False) -> str:
    left = _centred(ctx, a, a_zero, axis_shape=(-1, 1))
    right = _centred(ctx, b, b_zero, axis_shape=(-1, 1) if trans_b else None)
    left = f"{left}.t()" if trans_a else left
    right = f"{right}.t()" if trans_b else right
    return f"torch.matmul({left}, {right})"


@register_op("QLinearMatMul", since=10)
def qlinear_matmul(ctx):
    acc = _matmul_acc(ctx, 0, 2, 3, 5)
    return _saturate(ctx, f"{acc}.to(torch.float32) * {_multiplier(ctx, [1, 4], 6)}", 7, 0)


@register_op("QGemm", domain="com.microsoft", since=1)
def qgemm(ctx):
    alpha = float(ctx.attr("alpha", 1.0))
    trans_a, trans_b = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))
    for i, shape in ((0, ctx.shape(0)), (3, ctx.shape(3))):
        if shape is not None and len(shape) != 2:
            raise Contradiction(f"input {'AB'[i > 0]} has shape {tuple(shape)}; QGemm needs a matrix")
    acc = _matmul_acc(ctx, 0, 2, 3, 5, trans_a, trans_b)
    if ctx.has_input(6):  # C: int32, already at the accumulator's scale
        acc = f"({acc} + {ctx.x(6)}.to(torch.float64))"
    if not ctx.has_input(7):  # no output scale: a float result
        return f"{acc}.to(torch.float32) * {_multiplier(ctx, [1, 4], 1, factor=alpha)} * {_number(ctx, 1)}"
    return _saturate(ctx, f"{acc}.to(torch.float32) * {_multiplier(ctx, [1, 4], 7, factor=alpha)}", 8, 0)


def _dequantized(ctx, i: int, scale: int, zero: int) -> str:
    return f"{_centred(ctx, i, zero, wide='torch.float32')} * {_number(ctx, scale)}"


def _requantized(ctx, value: str, scale: int, zero: int, like: int) -> str:
    return _saturate(ctx, f"{value} / {_number(ctx, scale)}", zero, like)


@register_op("QLinearAdd", domain="com.microsoft", since=1)
def qlinear_add(ctx):
    a, b = _centred(ctx, 0, 2, wide="torch.float32"), _centred(ctx, 3, 5, wide="torch.float32")
    value = f"{_multiplier(ctx, [1], 6)} * {a} + {_multiplier(ctx, [4], 6)} * {b}"
    return _saturate(ctx, value, 7, 0)


@register_op("QLinearMul", domain="com.microsoft", since=1)
def qlinear_mul(ctx):
    a, b = _centred(ctx, 0, 2, wide="torch.float32"), _centred(ctx, 3, 5, wide="torch.float32")
    return _saturate(ctx, f"{a} * {b} * {_multiplier(ctx, [1, 4], 6)}", 7, 0)


@register_op("QLinearSigmoid", domain="com.microsoft", since=1)
def qlinear_sigmoid(ctx):
    return _requantized(ctx, f"torch.sigmoid({_dequantized(ctx, 0, 1, 2)})", 3, 4, 0)


@register_op("QLinearLeakyRelu", domain="com.microsoft", since=1)
def qlinear_leaky_relu(ctx):
    alpha = ctx.lit(np.float32(ctx.attr("alpha", 0.01)))
    return _requantized(ctx, f"F.leaky_relu({_dequantized(ctx, 0, 1, 2)}, {alpha})", 3, 4, 0)


def _channels_last(ctx) -> bool:
    value = int(ctx.attr("channels_last", 0))
    if value not in (0, 1):
        raise Contradiction(f"attribute channels_last={value} must be 0 or 1")
    return bool(value)


@register_op("QLinearGlobalAveragePool", domain="com.microsoft", since=1)
def qlinear_global_average_pool(ctx):
    rank = ctx.rank(0)
    dims = tuple(range(1, rank - 1)) if _channels_last(ctx) else tuple(range(2, rank))
    shape = ctx.shape(0)
    if shape is None or any(not isinstance(shape[d], int) for d in dims):
        raise Unsupported("QLinearGlobalAveragePool needs static spatial sizes")
    size = int(np.prod([shape[d] for d in dims]))
    consts = [ctx.const(i) for i in (1, 3)]
    if any(c is None or c.size != 1 for c in consts):
        raise Unsupported("QLinearGlobalAveragePool with scales computed at run time")
    # onnxruntime sums integers, then applies x_scale / size / y_scale once
    scale = consts[0].reshape(()) / np.float32(size) / consts[1].reshape(())
    total = f"{_centred(ctx, 0, 2)}.sum(dim={ctx.lit(dims)}, keepdim=True)"
    return _saturate(ctx, f"{total}.to(torch.float32) * {ctx.lit(scale[()])}", 4, 0)


@register_op("QLinearAveragePool", domain="com.microsoft", since=1)
def qlinear_average_pool(ctx):
    if _channels_last(ctx):
        raise Unsupported("channels_last QLinearAveragePool")
    pooled = _pool(ctx, "avg", x=f"({_dequantized(ctx, 0, 1, 2)})")
    return _requantized(ctx, pooled, 3, 4, 0)


@register_op("QLinearConcat", domain="com.microsoft", since=1)
def qlinear_concat(ctx):
    if ctx.num_inputs < 5 or (ctx.num_inputs - 2) % 3:
        raise Contradiction(f"{ctx.num_inputs} inputs; QLinearConcat takes Y_scale, Y_zero_point, then "
                            "(tensor, scale, zero point) triples")
    rank = ctx.rank(2)
    axis = int(ctx.attr("axis", 1))
    if not -rank <= axis < rank:
        raise Contradiction(f"attribute axis={axis} is out of range for inputs of rank {rank}")
    y_scale, y_zero = ctx.const(0), ctx.const(1)
    parts = []
    for i in range(2, ctx.num_inputs, 3):
        scale, zero = ctx.const(i + 1), ctx.const(i + 2)
        same = all(c is not None for c in (y_scale, y_zero, scale, zero)) and np.array_equal(scale, y_scale) \
            and np.array_equal(zero, y_zero) and zero.dtype == y_zero.dtype
        parts.append(ctx.x(i) if same else _requantized(ctx, f"{_dequantized(ctx, i, i + 1, i + 2)}", 0, 1, i))
    return f"torch.cat([{', '.join(parts)}], dim={axis % rank})"
