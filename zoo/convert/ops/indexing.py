"""Index and generate: Constant, Range, Trilu, EyeLike, OneHot, NonZero, Compress, GatherND, Scatter*, BitShift."""
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


GATHER_ND = '''
def gather_nd(x, index, batch_dims):
    # ONNX GatherND whose data and indices share leading batch dimensions: each batch row indexes its own.
    batch = x.shape[:batch_dims]
    x, index = x.flatten(0, batch_dims - 1), index.flatten(0, batch_dims - 1)
    rows = torch.arange(x.shape[0], device=x.device).reshape(-1, *[1] * (index.dim() - 2))
    return x[(rows, *index.unbind(-1))].unflatten(0, batch)
'''


@register_op("GatherND", since=11)
def gather_nd(ctx):
    b = checks.integer(ctx, "batch_dims", 0, minimum=0)
    if b == 0:
        return f"{ctx.x(0)}[tuple({ctx.x(1)}.unbind(-1))]"
    ranks = [r for r in (ctx.value(0).rank, ctx.value(1).rank) if r is not None]
    if ranks and b >= min(ranks):
        raise checks.Contradiction(f"attribute batch_dims={b} must be smaller than the ranks {ranks} of the inputs")
    return f"{ctx.helper('gather_nd', GATHER_ND)}({ctx.x(0)}, {ctx.x(1)}, {b})"


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


SCATTER_ND_REDUCE = '''
def scatter_nd_reduce(x, indices, updates, reduce):
    # ONNX ScatterND with a mul/max/min reduction, which index_put lacks: the indexed leading
    # dimensions flattened into one, so that scatter_reduce combines repeated indices.
    k = indices.shape[-1]
    index = torch.zeros(indices.shape[:-1], dtype=torch.int64, device=x.device)
    for i in range(k):
        index = index * x.shape[i] + torch.where(indices[..., i] < 0, indices[..., i] + x.shape[i], indices[..., i])
    rest = x.shape[k:]
    updates = updates.reshape(-1, *rest)
    index = index.reshape(-1, *[1] * len(rest)).expand_as(updates)
    return x.flatten(0, k - 1).scatter_reduce(0, index, updates, reduce).reshape(x.shape)
'''


@register_op("ScatterND", since=11)
def scatter_nd(ctx):
    reduction = ctx.attr("reduction", "none")
    x, idx, upd = ctx.x(0), ctx.x(1), ctx.x(2)
    if reduction in ("none", "add"):
        accumulate = ", accumulate=True" if reduction == "add" else ""
        return f"{x}.index_put(tuple({idx}.unbind(-1)), {upd}{accumulate})"
    if reduction not in _REDUCTIONS:
        raise checks.Contradiction(f"attribute reduction={reduction!r} is not one of none, add, mul, max, min")
    if (ctx.shape(1) or (0,))[-1] == 0:
        raise Unsupported("ScatterND with empty index tuples and a reduction")
    fn = ctx.helper("scatter_nd_reduce", SCATTER_ND_REDUCE)
    return f"{fn}({x}, {idx}, {upd}, {_REDUCTIONS[reduction]!r})"


TENSOR_SCATTER = '''
def tensor_scatter(cache, update, write_indices=None, axis=-2, circular=False):
    # ONNX TensorScatter: each batch entry's update written into the cache along axis from its write index.
    axis %= cache.dim()
    start = torch.zeros(cache.shape[0], dtype=torch.int64, device=cache.device) if write_indices is None \\
        else write_indices.to(torch.int64)
    position = start.reshape(-1, 1) + torch.arange(update.shape[axis], device=cache.device)
    if circular:
        position = position % cache.shape[axis]
    shape = [cache.shape[0]] + [1] * (cache.dim() - 1)
    shape[axis] = update.shape[axis]
    return cache.scatter(axis, position.reshape(shape).expand_as(update), update)
'''

_TENSOR_SCATTER_MODES = {"linear": False, "circular": True}


@register_op("TensorScatter", since=24)
def tensor_scatter(ctx):
    mode = ctx.attr("mode", "linear")
    if mode not in _TENSOR_SCATTER_MODES:
        raise checks.Contradiction(f"attribute mode={mode!r} is not 'linear' or 'circular'")
    a = norm_axis(ctx, int(ctx.attr("axis", -2)), ctx.rank(0))
    if a == 0:
        raise checks.Contradiction("attribute axis=0 is the batch dimension, which TensorScatter cannot write along")
    fn = ctx.helper("tensor_scatter", TENSOR_SCATTER)
    args = [ctx.x(0), ctx.x(1)] + ([ctx.x(2)] if ctx.has_input(2) else [])
    return f"{fn}({', '.join(args)}, axis={a}, circular={_TENSOR_SCATTER_MODES[mode]})"


_SHIFTS = {"LEFT": "torch.bitwise_left_shift", "RIGHT": "torch.bitwise_right_shift"}


@register_op("BitShift", since=11)
def bit_shift(ctx):
    direction = ctx.attr("direction")
    if direction not in _SHIFTS:
        raise checks.Contradiction(f"attribute direction={direction!r} is not 'LEFT' or 'RIGHT'")
    x, n = ctx.x(0), ctx.x(1)
    dtype = ctx.dtype(0)
    name = np.dtype(dtype).name if dtype is not None else ""
    # torch has shift kernels for uint8 and the signed types only
    if name in ("uint16", "uint32"):
        shifted = f"{_SHIFTS[direction]}({x}.to(torch.int64), {n}.to(torch.int64))"
        return f"({shifted} & {(1 << 8 * np.dtype(dtype).itemsize) - 1}).to({ctx.torch_dtype(dtype)})"
    if name == "uint64":  # as int64 bits: a left shift is the same; a right shift must not extend the sign
        x, n = f"{x}.view(torch.int64)", f"{n}.view(torch.int64)"
        if direction == "LEFT":
            return f"torch.bitwise_left_shift({x}, {n}).view(torch.uint64)"
        return f"(torch.bitwise_right_shift({x}, {n}) & ~torch.bitwise_left_shift(-1, 64 - {n})).view(torch.uint64)"
    return f"{_SHIFTS[direction]}({x}, {n})"


@register_op("Einsum", since=12)
def einsum(ctx):
    import re

    equation = str(ctx.attr("equation", ""))
    if not re.fullmatch(r"[A-Za-z.,\->\s]*", equation):
        raise Unsupported("an equation with characters outside letters, ',', '->' and '...'")
    operands = ", ".join(ctx.x(i) for i in range(ctx.num_inputs))
    return f"torch.einsum({equation.replace(' ', '')!r}, {operands})"
