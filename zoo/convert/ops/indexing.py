"""Index and generate: Constant, Range, Trilu, EyeLike, OneHot, NonZero, Compress, GatherND, Scatter*."""
from __future__ import annotations

import math

import numpy as np

from .. import checks
from ..errors import Unsupported
from ..registry import register_op
from ._util import axis as norm_axis
from ._util import wrap_negative


@register_op("Constant", since=1)
def constant(ctx):
    # Folded before lowering; reached only when folding could not evaluate it.
    raise Unsupported("a Constant that could not be evaluated")


@register_op("Range", since=11)
def range_(ctx):
    dtype = ctx.torch_dtype(ctx.dtype(0))
    bounds = [ctx.const(i) for i in range(3)]
    if all(c is not None and c.size == 1 for c in bounds):
        start, limit, delta = (float(c.reshape(-1)[0]) for c in bounds)
        if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
            raise checks.Contradiction(f"Range({start}, {limit}, {delta}) needs a finite, non-zero delta")
        checks.output_fits([max(0, math.ceil((limit - start) / delta))], "Range", np.dtype(ctx.dtype(0)).itemsize)
    start, limit, delta = (ctx.operand(i) for i in range(3))
    start, limit, delta = (v if not v.startswith("self.") and "\x00" not in v else f"{v}.item()" for v in (start, limit, delta))
    return f"torch.arange({start}, {limit}, {delta}, dtype={dtype})"


@register_op("Trilu", since=14)
def trilu(ctx):
    k = ctx.const(1) if ctx.has_input(1) else np.int64(0)
    k = ctx.lit(int(np.asarray(k).reshape(-1)[0])) if k is not None else f"int({ctx.x(1)})"
    fn = "torch.triu" if ctx.attr("upper", 1) else "torch.tril"
    return f"{fn}({ctx.x(0)}, {k})"


@register_op("EyeLike", since=9)
def eye_like(ctx):
    dtype = ctx.torch_dtype(ctx.out_dtype(0))
    k = int(ctx.attr("k", 0))
    return f"torch.ones_like({ctx.x(0)}, dtype={dtype}).triu({k}).tril({k})"


@register_op("OneHot", since=9)
def one_hot(ctx):
    depth = ctx.const(1)
    values = ctx.x(2)
    rank = ctx.rank(0) + 1
    a = norm_axis(ctx, int(ctx.attr("axis", -1)), rank)
    n = ctx.lit(int(np.asarray(depth).reshape(-1)[0])) if depth is not None else f"int({ctx.x(1)})"
    idx = ctx.x(0)
    wrapped = wrap_negative(idx, n)
    mask = f"{wrapped}.unsqueeze(-1) == torch.arange({n}, device={idx}.device)"
    expr = f"torch.where({mask}, {values}[1], {values}[0])"
    return expr if a == rank - 1 else f"{expr}.movedim(-1, {a})"


@register_op("NonZero", since=9)
def nonzero(ctx):
    return f"torch.nonzero({ctx.x(0)}).t()"


@register_op("Compress", since=9)
def compress(ctx):
    x, cond = ctx.x(0), ctx.x(1)
    a = ctx.attr("axis")
    if a is None:
        return f"{x}.flatten()[torch.nonzero({cond}).flatten()]"
    a = norm_axis(ctx, int(a), ctx.rank(0))
    return f"{x}.index_select({a}, torch.nonzero({cond}).flatten())"


@register_op("GatherND", since=11)
def gather_nd(ctx):
    if ctx.attr("batch_dims", 0):
        raise Unsupported("batch_dims > 0")
    return f"{ctx.x(0)}[tuple({ctx.x(1)}.unbind(-1))]"


_REDUCTIONS = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@register_op("Scatter", since=9)  # the deprecated name of ScatterElements without reduction
@register_op("ScatterElements", since=11)
def scatter_elements(ctx):
    rank = ctx.rank(0)
    a = norm_axis(ctx, int(ctx.attr("axis", 0)), rank)
    x, idx, upd = ctx.x(0), ctx.x(1), ctx.x(2)
    index = wrap_negative(idx, f"{x}.shape[{a}]")
    reduction = ctx.attr("reduction", "none")
    if reduction == "none":
        return f"{x}.scatter({a}, {index}, {upd})"
    if reduction not in _REDUCTIONS:
        raise Unsupported(f"reduction {reduction!r}")
    return f"{x}.scatter_reduce({a}, {index}, {upd}, {_REDUCTIONS[reduction]!r})"


@register_op("ScatterND", since=11)
def scatter_nd(ctx):
    reduction = ctx.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise Unsupported(f"reduction {reduction!r}")
    accumulate = ", accumulate=True" if reduction == "add" else ""
    return f"{ctx.x(0)}.index_put(tuple({ctx.x(1)}.unbind(-1)), {ctx.x(2)}{accumulate})"


@register_op("BitShift", since=11)
def bit_shift(ctx):
    fn = "torch.bitwise_left_shift" if ctx.attr("direction") == "LEFT" else "torch.bitwise_right_shift"
    return f"{fn}({ctx.x(0)}, {ctx.x(1)})"


@register_op("Einsum", since=12)
def einsum(ctx):
    import re

    equation = str(ctx.attr("equation", ""))
    if not re.fullmatch(r"[A-Za-z.,\->\s]*", equation):
        raise Unsupported("an equation with characters outside letters, ',', '->' and '...'")
    operands = ", ".join(ctx.x(i) for i in range(ctx.num_inputs))
    return f"torch.einsum({equation.replace(' ', '')!r}, {operands})"
