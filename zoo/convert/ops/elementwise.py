"""Element-wise arithmetic, comparison and logic; variadic Sum/Max/Min/Mean."""
from __future__ import annotations

from ..errors import Unsupported
from ..registry import register_op
from . import unsigned

_BINARY = {
    "Add": "{a} + {b}", "Sub": "{a} - {b}", "Mul": "{a} * {b}",
    "Equal": "{a} == {b}", "Less": "{a} < {b}", "Greater": "{a} > {b}",
    "LessOrEqual": "{a} <= {b}", "GreaterOrEqual": "{a} >= {b}",
    "And": "torch.logical_and({a}, {b})", "Or": "torch.logical_or({a}, {b})", "Xor": "torch.logical_xor({a}, {b})",
    "BitwiseAnd": "torch.bitwise_and({a}, {b})", "BitwiseOr": "torch.bitwise_or({a}, {b})",
    "BitwiseXor": "torch.bitwise_xor({a}, {b})",
}
_UNARY = {
    "Neg": "-{x}", "Abs": "torch.abs({x})", "Sqrt": "torch.sqrt({x})", "Exp": "torch.exp({x})",
    "Log": "torch.log({x})", "Reciprocal": "torch.reciprocal({x})", "Floor": "torch.floor({x})",
    "Ceil": "torch.ceil({x})", "Round": "torch.round({x})", "Sign": "torch.sign({x})", "Sin": "torch.sin({x})",
    "Cos": "torch.cos({x})", "Tan": "torch.tan({x})", "Asin": "torch.asin({x})", "Acos": "torch.acos({x})",
    "Atan": "torch.atan({x})", "Sinh": "torch.sinh({x})", "Cosh": "torch.cosh({x})", "Asinh": "torch.asinh({x})",
    "Acosh": "torch.acosh({x})", "Atanh": "torch.atanh({x})", "Not": "torch.logical_not({x})",
    "IsNaN": "torch.isnan({x})",
}


# PyTorch implements little arithmetic for uint16/uint32: compute in int64 (exact for them), cast back.
_WIDEN = {"uint16", "uint32"}


def _widened(ctx, template: str, a: str, b: str) -> str:
    dtype = ctx.dtype(0)
    if dtype is None or dtype.name not in _WIDEN:
        return template.format(a=a, b=b)
    expr = template.format(a=f"{a}.to(torch.int64)", b=f"{b}.to(torch.int64)")
    out = ctx.out_dtype(0)
    return f"({expr}).to({ctx.torch_dtype(out)})" if out is not None and out.kind != "b" else expr


def _binary(template: str):
    def handler(ctx):
        if ctx.opset < 7 and ctx.attr("broadcast", 0):
            raise Unsupported("legacy broadcast attribute (opset < 7)")
        if unsigned.is_uint64(ctx) and (expr := unsigned.binary(ctx)) is not None:
            return expr
        # torch.logical_and(True, x) is refused: a function's first operand stays a tensor
        first = ctx.x(0) if template.startswith("torch.") else ctx.operand(0, like=1)
        return _widened(ctx, template, first, ctx.operand(1, like=0))

    return handler


for _op, _template in _BINARY.items():
    register_op(_op, since=1)(_binary(_template))
for _op, _template in _UNARY.items():
    register_op(_op, since=1)(lambda ctx, _t=_template: _t.format(x=ctx.x(0)))


@register_op("BitwiseNot", since=18)
def bitwise_not(ctx):
    dtype = ctx.dtype(0)
    if dtype is not None and dtype.name in _WIDEN:  # the cast back wraps, which is the complement
        return f"torch.bitwise_not({ctx.x(0)}.to(torch.int64)).to({ctx.torch_dtype(dtype)})"
    return f"torch.bitwise_not({ctx.x(0)})"


@register_op("Div", since=1)
def div(ctx):
    if unsigned.is_uint64(ctx):
        return unsigned.binary(ctx)
    a, b = ctx.operand(0, like=1), ctx.operand(1, like=0)
    if ctx.dtype(0) is not None and ctx.dtype(0).kind in "iu":
        return _widened(ctx, "torch.div({a}, {b}, rounding_mode='trunc')", a, b)
    return f"{a} / {b}"


@register_op("Pow", since=1)
def power(ctx):
    expr = f"torch.pow({ctx.x(0)}, {ctx.operand(1, like=0)})"
    if ctx.dtype(0) != ctx.dtype(1) and ctx.dtype(0) is not None:
        expr += f".to({ctx.torch_dtype(ctx.dtype(0))})"
    return expr


@register_op("Mod", since=10)
def mod(ctx):
    if unsigned.is_uint64(ctx):  # fmod or not, the remainder of unsigned numbers is the same
        return unsigned.binary(ctx)
    fn = "torch.fmod" if ctx.attr("fmod", 0) else "torch.remainder"
    return _widened(ctx, fn + "({a}, {b})", ctx.x(0), ctx.operand(1, like=0))


@register_op("IsInf", since=10)
def is_inf(ctx):
    pos, neg = ctx.attr("detect_positive", 1), ctx.attr("detect_negative", 1)
    if pos and neg:
        return f"torch.isinf({ctx.x(0)})"
    if pos:
        return f"torch.isposinf({ctx.x(0)})"
    if neg:
        return f"torch.isneginf({ctx.x(0)})"
    return f"torch.zeros_like({ctx.x(0)}, dtype=torch.bool)"


@register_op("Sum", since=1)
def total(ctx):
    return " + ".join(ctx.x(i) for i in range(ctx.num_inputs))


def _variadic(fn: str):
    def handler(ctx):
        if unsigned.is_uint64(ctx):
            return unsigned.extremum(ctx, fn)
        widen = ctx.dtype(0) is not None and ctx.dtype(0).name in _WIDEN
        expr = ctx.x(0) + (".to(torch.int64)" if widen else "")
        for i in range(1, ctx.num_inputs):
            expr = f"{fn}({expr}, {ctx.x(i)}{'.to(torch.int64)' if widen else ''})"
        return f"{expr}.to({ctx.torch_dtype(ctx.dtype(0))})" if widen else expr

    return handler


register_op("Max", since=1)(_variadic("torch.maximum"))
register_op("Min", since=1)(_variadic("torch.minimum"))


@register_op("Mean", since=1)
def mean(ctx):
    total_expr = " + ".join(ctx.x(i) for i in range(ctx.num_inputs))
    return f"({total_expr}) / {ctx.num_inputs}" if ctx.num_inputs > 1 else ctx.x(0)


@register_op("Where", since=9)
def where(ctx):
    return f"torch.where({ctx.x(0)}, {ctx.x(1)}, {ctx.x(2)})"
