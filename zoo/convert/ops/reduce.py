"""Reductions (ReduceSum, ReduceMean, ...), ArgMax/ArgMin, TopK, CumSum."""
from __future__ import annotations

import numpy as np

from ..errors import Unsupported
from ..registry import register_op
from ._util import axis as norm_axis

# op -> (template over {x}, {dims}, {keep}; the opset from which axes is an input)
_REDUCE = {
    "ReduceSum": ("torch.sum({x}, dim={dims}, keepdim={keep})", 13),
    "ReduceMean": ("torch.mean({x}, dim={dims}, keepdim={keep})", 18),
    "ReduceMax": ("torch.amax({x}, dim={dims}, keepdim={keep})", 18),
    "ReduceMin": ("torch.amin({x}, dim={dims}, keepdim={keep})", 18),
    "ReduceL1": ("torch.sum(torch.abs({x}), dim={dims}, keepdim={keep})", 18),
    "ReduceL2": ("torch.sqrt(torch.sum({x} * {x}, dim={dims}, keepdim={keep}))", 18),
    "ReduceSumSquare": ("torch.sum({x} * {x}, dim={dims}, keepdim={keep})", 18),
    "ReduceLogSum": ("torch.log(torch.sum({x}, dim={dims}, keepdim={keep}))", 18),
    "ReduceLogSumExp": ("torch.logsumexp({x}, dim={dims}, keepdim={keep})", 18),
    "ReduceProd": (None, 18),
}


def _reduce(op: str):
    template, input_since = _REDUCE[op]

    def handler(ctx):
        rank = ctx.value(0).rank
        if ctx.opset >= input_since:
            axes = ctx.const(1) if ctx.has_input(1) else None
            if ctx.has_input(1) and axes is None:
                return _runtime_axes(ctx, template)
            axes = None if axes is None or axes.size == 0 else [int(a) for a in axes.reshape(-1)]
            if axes is None and ctx.attr("noop_with_empty_axes", 0):
                return ctx.x(0)
        else:
            axes = ctx.attr("axes")
        if rank is None and axes and template is not None:
            dims = tuple(sorted(axes))  # torch counts negative dims from the end as ONNX does: no rank needed
        else:
            rank = ctx.rank(0)
            dims = tuple(sorted(a % rank for a in axes)) if axes else tuple(range(rank))
        keep = bool(ctx.attr("keepdims", 1))
        x = ctx.x(0)
        dtype = ctx.dtype(0)
        if op in ("ReduceMax", "ReduceMin") and _empty(ctx, dims):
            return _identity(ctx, op, dtype)
        if dtype is not None and dtype.kind == "b" and op in ("ReduceMax", "ReduceMin"):
            x = f"{x}.to(torch.uint8)"
        if template is None:  # torch.prod reduces one dimension at a time
            expr = x
            for d in sorted(dims, reverse=True):
                expr = f"torch.prod({expr}, dim={d}, keepdim={keep})"
            if not dims:
                expr = f"torch.prod({expr})"
        else:
            expr = template.format(x=x, dims=ctx.lit(dims), keep=keep)
        if dtype is not None and dtype.kind in "biu" and dtype != np.int64:
            expr += f".to({ctx.torch_dtype(dtype)})"
        return expr

    return handler


REDUCE_PROD = '''
def reduce_prod(x, dims, keepdim):
    # torch.prod reduces one dimension at a time.
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x
'''


def _empty(ctx, dims) -> bool:
    """A reduction over an axis of size 0 (statically known), which torch.amax/amin refuse."""
    shape = ctx.shape(0)
    return shape is not None and any(shape[d] == 0 for d in dims if d < len(shape))


def _identity(ctx, op, dtype):
    """ONNX's ReduceMax/ReduceMin of an empty set: the identity of the reduction, in the output's shape."""
    out = ctx.out_shape(0)
    if out is None or not all(isinstance(d, int) for d in out):
        raise Unsupported("an empty reduction whose output shape is unknown")
    if dtype is not None and dtype.kind == "b":
        value = "False" if op == "ReduceMax" else "True"
    elif dtype is not None and dtype.kind in "iu":
        value = f"torch.iinfo({ctx.torch_dtype(dtype)}).{'min' if op == 'ReduceMax' else 'max'}"
    else:
        value = "float('-inf')" if op == "ReduceMax" else "float('inf')"
    dt = ctx.torch_dtype(dtype) if dtype is not None else "torch.float32"
    return f"torch.full({ctx.lit(tuple(out))}, {value}, dtype={dt}, device={ctx.x(0)}.device)"


def _runtime_axes(ctx, template):
    """Axes known only at run time (a graph input): empty means all axes, or none with noop_with_empty_axes."""
    x, axes = ctx.x(0), ctx.x(1)
    if template is None:
        template = ctx.helper("reduce_prod", REDUCE_PROD) + "({x}, {dims}, {keep})"
    keep = bool(ctx.attr("keepdims", 1))
    dims = f"tuple({axes}.tolist()) or tuple(range({x}.dim()))"
    dtype = ctx.dtype(0)
    op = ctx.op_type
    shape = ctx.shape(0)
    if op in ("ReduceMax", "ReduceMin") and shape is not None and 0 in shape:
        out = ctx.out_shape(0)
        if out is not None and all(isinstance(d, int) for d in out) and 0 not in out:
            return _identity(ctx, op, dtype)
    if dtype is not None and dtype.kind == "b":
        if op not in ("ReduceMax", "ReduceMin"):
            raise Unsupported("boolean input with non-constant axes")
        expr = template.format(x=f"{x}.to(torch.uint8)", dims=f"({dims})", keep=keep) + ".to(torch.bool)"
    else:
        expr = template.format(x=x, dims=f"({dims})", keep=keep)
    if dtype is not None and dtype.kind in "iu" and dtype != np.int64:
        expr += f".to({ctx.torch_dtype(dtype)})"
    if ctx.attr("noop_with_empty_axes", 0):
        return f"{x} if {axes}.numel() == 0 else {expr}"
    return expr


for _op in _REDUCE:
    register_op(_op, since=1)(_reduce(_op))


def _arg(fn: str):
    def handler(ctx):
        rank = ctx.rank(0)
        a = norm_axis(ctx, int(ctx.attr("axis", 0)), rank)
        keep = bool(ctx.attr("keepdims", 1))
        x = ctx.x(0)
        if ctx.attr("select_last_index", 0):
            return f"{x}.shape[{a}] - 1 - torch.{fn}({x}.flip({a}), dim={a}, keepdim={keep})"
        return f"torch.{fn}({x}, dim={a}, keepdim={keep})"

    return handler


register_op("ArgMax", since=1)(_arg("argmax"))
register_op("ArgMin", since=1)(_arg("argmin"))


TOPK = '''
def topk(x, k, dim, largest):
    values, indices = torch.sort(x, dim=dim, descending=largest, stable=True)
    return values.narrow(dim, 0, k), indices.narrow(dim, 0, k)
'''


@register_op("TopK", since=1)
def topk(ctx):
    from ..lower import Multi

    rank = ctx.rank(0)
    a = norm_axis(ctx, int(ctx.attr("axis", -1)), rank)
    k = ctx.attr("k") if ctx.opset < 10 else ctx.const(1)
    k = ctx.lit(int(np.asarray(k).reshape(-1)[0])) if k is not None else f"int({ctx.x(1)}[0])"
    largest = bool(ctx.attr("largest", 1))
    # A stable sort keeps ONNX's rule that, among equal values, the lower index comes first.
    fn = ctx.helper("topk", TOPK)
    return Multi(f"{fn}({ctx.x(0)}, {k}, {a}, {largest})")


def _cumulative(ctx, fn: str, exclusive_of) -> str:
    """CumSum/CumProd: ``exclusive_of(inclusive, source, axis)`` shifts the inclusive result by one."""
    axis = ctx.const(1)
    a = norm_axis(ctx, int(axis.reshape(-1)[0]), ctx.rank(0)) if axis is not None else f"int({ctx.x(1)})"
    x = ctx.x(0)
    dtype = ctx.dtype(0)
    cast = f".to({ctx.torch_dtype(dtype)})" if dtype is not None and dtype.kind in "iu" and dtype != np.int64 else ""
    reverse = ctx.attr("reverse", 0)
    source = f"{x}.flip({a})" if reverse else x
    expr = f"{fn}({source}, dim={a}){cast}"
    if ctx.attr("exclusive", 0):
        expr = exclusive_of(expr, source, a)
    return f"{expr}.flip({a})" if reverse else expr


@register_op("CumSum", since=11)
def cumsum(ctx):
    return _cumulative(ctx, "torch.cumsum", lambda inclusive, source, a: f"({inclusive} - {source})")


@register_op("CumProd", since=26)
def cumprod(ctx):
    return _cumulative(ctx, "torch.cumprod", lambda inclusive, source, a: (
        f"torch.cat([torch.ones_like({source}.narrow({a}, 0, 1)), "
        f"{inclusive}.narrow({a}, 0, {source}.shape[{a}] - 1)], dim={a})"))
