"""Activations and the softmax family."""
from __future__ import annotations

import numpy as np

from ..errors import Unsupported
from ..registry import register_op
from ._util import axis as norm_axis


def _f32(ctx, name, default):
    return ctx.lit(np.float32(ctx.attr(name, default)))


_SIMPLE = {
    "Relu": "torch.relu({x})",
    "Sigmoid": "torch.sigmoid({x})",
    "Tanh": "torch.tanh({x})",
    "Softsign": "F.softsign({x})",
    "Mish": "F.mish({x})",
    "Erf": "torch.erf({x})",
}
for _op, _template in _SIMPLE.items():
    register_op(_op, since=1)(lambda ctx, _t=_template: _t.format(x=ctx.x(0)))


@register_op("LeakyRelu", since=1)
def leaky_relu(ctx):
    return f"F.leaky_relu({ctx.x(0)}, {_f32(ctx, 'alpha', 0.01)})"


@register_op("PRelu", since=1)
def prelu(ctx):
    return f"torch.where({ctx.x(0)} >= 0, {ctx.x(0)}, {ctx.x(0)} * {ctx.operand(1, like=0)})"


@register_op("Elu", since=1)
def elu(ctx):
    return f"F.elu({ctx.x(0)}, alpha={_f32(ctx, 'alpha', 1.0)})"


@register_op("Celu", since=12)
def celu(ctx):
    return f"F.celu({ctx.x(0)}, alpha={_f32(ctx, 'alpha', 1.0)})"


@register_op("Selu", since=1)
def selu(ctx):
    alpha, gamma = np.float32(ctx.attr("alpha", 1.67326319217681884765625)), np.float32(ctx.attr("gamma", 1.05070102214813232421875))
    x = ctx.x(0)
    return f"{ctx.lit(gamma)} * torch.where({x} > 0, {x}, {ctx.lit(alpha)} * torch.expm1({x}))"


@register_op("ThresholdedRelu", since=10)
def thresholded_relu(ctx):
    x = ctx.x(0)
    return f"torch.where({x} > {_f32(ctx, 'alpha', 1.0)}, {x}, torch.zeros_like({x}))"


@register_op("HardSigmoid", since=1)
def hard_sigmoid(ctx):
    alpha, beta = np.float32(ctx.attr("alpha", 0.2)), np.float32(ctx.attr("beta", 0.5))
    if abs(alpha - 1 / 6) < 1e-7 and beta == 0.5:
        return f"F.hardsigmoid({ctx.x(0)})"
    return f"torch.clamp({ctx.x(0)} * {ctx.lit(alpha)} + {ctx.lit(beta)}, 0.0, 1.0)"


@register_op("HardSwish", since=14)
def hard_swish(ctx):
    return f"F.hardswish({ctx.x(0)})"


@register_op("Softplus", since=1)
def softplus(ctx):
    return f"F.softplus({ctx.x(0)})"


@register_op("Gelu", since=20)
def gelu(ctx):
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"approximate={approximate!r}")
    return f"F.gelu({ctx.x(0)})" if approximate == "none" else f"F.gelu({ctx.x(0)}, approximate='tanh')"


@register_op("Shrink", since=9)
def shrink(ctx):
    x = ctx.x(0)
    lambd, bias = _f32(ctx, "lambd", 0.5), _f32(ctx, "bias", 0.0)
    return f"torch.where({x} < -{lambd}, {x} + {bias}, torch.where({x} > {lambd}, {x} - {bias}, torch.zeros_like({x})))"


@register_op("Clip", since=1)
def clip(ctx):
    if ctx.opset < 11:
        low, high = ctx.attr("min"), ctx.attr("max")
        low = None if low is None else ctx.lit(np.float32(low))
        high = None if high is None else ctx.lit(np.float32(high))
    else:
        low = ctx.operand(1) if ctx.has_input(1) else None
        high = ctx.operand(2) if ctx.has_input(2) else None
    if low == "0.0" and high == "6.0":
        return f"F.relu6({ctx.x(0)})"
    if low is None and high is None:
        return ctx.x(0)
    return f"torch.clamp({ctx.x(0)}, min={low}, max={high})"


def _softmax_family(fn: str):
    def handler(ctx):
        rank = ctx.rank(0)
        default = 1 if ctx.opset < 13 else -1
        ax = norm_axis(ctx, int(ctx.attr("axis", default)), rank)
        x = ctx.x(0)
        if ctx.opset >= 13 or ax == rank - 1:
            return fn.format(x=x, dim=ax)
        # Before opset 13 the input is flattened to 2-d at the axis and normalised over the whole tail.
        return fn.format(x=f"{x}.flatten({ax})", dim=ax) + f".reshape({x}.shape)"

    return handler


LOW_PRECISION_SOFTMAX = '''
def low_precision_softmax(x, dim=-1):
    # Softmax rounded to float16/bfloat16 after each step, as ONNX's reference computes it (torch.softmax
    # rounds once: an ulp apart). The reference sums bfloat16 one element at a time, rounding each partial
    # sum, so this does too: a loop over dim, the price of matching it.
    top = x.amax(dim, keepdim=True)
    e = torch.exp(x - torch.where(torch.isneginf(top), torch.zeros_like(top), top))
    if x.dtype == torch.bfloat16:
        parts = e.split(1, dim)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
    else:
        total = e.sum(dim, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)
'''

_LOW_PRECISION = ("float16", "bfloat16")
_plain_softmax = _softmax_family("torch.softmax({x}, dim={dim})")


@register_op("Softmax", since=1)
def softmax(ctx):
    dtype, rank = ctx.dtype(0), ctx.rank(0)
    ax = norm_axis(ctx, int(ctx.attr("axis", 1 if ctx.opset < 13 else -1)), rank)
    if dtype is None or dtype.name not in _LOW_PRECISION or (ctx.opset < 13 and ax != rank - 1):
        return _plain_softmax(ctx)
    fn = ctx.helper("low_precision_softmax", LOW_PRECISION_SOFTMAX)
    return f"{fn}({ctx.x(0)}, {ax})"


register_op("LogSoftmax", since=1)(_softmax_family("torch.log_softmax({x}, dim={dim})"))
register_op("Hardmax", since=1)(_softmax_family(
    "F.one_hot(torch.argmax({x}, dim={dim}), {x}.shape[{dim}]).movedim(-1, {dim}).to({x}.dtype)"))


@register_op("Swish", since=24)
def swish(ctx):
    alpha = np.float32(ctx.attr("alpha", 1.0))
    x = ctx.x(0)
    return f"F.silu({x})" if alpha == 1 else f"{x} * torch.sigmoid({ctx.lit(alpha)} * {x})"


@register_op("SwiGLU", since=28)
def swiglu(ctx):
    alpha = np.float32(ctx.attr("alpha", 1.0))
    a, b = ctx.x(0), ctx.x(1)
    gate = f"F.silu({a})" if alpha == 1 else f"{a} * torch.sigmoid({ctx.lit(alpha)} * {a})"
    return f"{gate} * {b}"
