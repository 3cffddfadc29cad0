"""MaxPool, AveragePool and the global pools.

PyTorch pools pad symmetrically; ONNX (and Caffe's ceil mode re-expressed as pads) may not. Asymmetric
pads are met by padding symmetrically to the larger side and slicing off the extra output rows, which is
exact whenever the difference is a multiple of the stride; otherwise the input is padded explicitly.
"""
from __future__ import annotations

import numpy as np

from .. import checks
from ..errors import Unsupported
from ..registry import register_op
from ._util import auto_pads, one_or_all, torch_pad


WINDOW_SUM = '''
def window_sum(x, kernel, stride, dilation, pads, extra=None):
    # Sums over dilated pooling windows (PyTorch's avg_pool and lp_pool take no dilation): each channel
    # convolved with a dilated kernel of ones. pads in F.pad's order; extra pads the end further (ceil mode).
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
    ones = torch.ones((1, 1, *kernel), dtype=x.dtype, device=x.device)
    padded = F.pad(x.flatten(0, 1).unsqueeze(1), pads)
    if extra:
        padded = F.pad(padded, extra)
    out = conv(padded, ones, stride=stride, dilation=dilation)
    return out.reshape(*x.shape[:2], *out.shape[2:])
'''

AVG_POOL = '''
def avg_pool(x, kernel, stride, dilation, pads, extra=None, count_pad=False):
    # ONNX AveragePool with dilations: window sums over the cells each window covers (padding counted or
    # not; ceil mode's extra end never).
    cells = F.pad(torch.ones_like(x[:1, :1]), pads, value=float(count_pad))
    return window_sum(x, kernel, stride, dilation, pads, extra) / window_sum(cells, kernel, stride, dilation,
                                                                             [0] * len(pads), extra)
'''

MAX_POOL_INDICES = '''
def max_pool_with_indices(x, kernel, stride, padding, dilation, ceil_mode=False, column_major=False):
    # ONNX numbers each maximum's position across the whole tensor, PyTorch within its (batch, channel)
    # plane; storage_order=1 numbers a plane column by column.
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[x.dim() - 3]
    y, index = pool(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    if column_major:
        index = index % x.shape[3] * x.shape[2] + index // x.shape[3]
    planes = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(*x.shape[:2], *[1] * (x.dim() - 2))
    return y, index + planes * x.shape[2:].numel()
'''


def _ceil_extra(ctx, kernel, strides, dilations, begins, ends) -> list[int] | None:
    """End padding that makes a floor-mode window count give ONNX's ceil-mode output size (static sizes)."""
    shape = ctx.shape(0)
    if shape is None or not all(checks.is_int(d) for d in shape[2:]):
        raise Unsupported("ceil_mode with spatial sizes unknown before run time")
    extra = []
    for size, k, s, d, b, e in zip(shape[2:], kernel, strides, dilations, begins, ends):
        padded, extent = size + b + e, (k - 1) * d + 1
        out = -(-(padded - extent) // s) + 1
        if (out - 1) * s >= size + b:  # the last window may not start in the end padding
            out -= 1
        extra.append(max(0, (out - 1) * s + extent - padded))
    return extra


def _dilated_average(ctx, kernel, strides, dilations, begins, ends, x: str):
    args = [x, ctx.lit(tuple(kernel)), ctx.lit(tuple(strides)), ctx.lit(tuple(dilations)),
            ctx.lit(torch_pad(begins, ends))]
    if ctx.attr("ceil_mode", 0):
        extra = _ceil_extra(ctx, kernel, strides, dilations, begins, ends)
        if any(extra):
            args.append(f"extra={ctx.lit(torch_pad([0] * len(extra), extra))}")
    if ctx.attr("count_include_pad", 0):
        args.append("count_pad=True")
    ctx.helper("window_sum", WINDOW_SUM)
    return f"{ctx.helper('avg_pool', AVG_POOL)}({', '.join(args)})"


def _pool(ctx, kind: str, x: str | None = None):
    """``x``: the input expression, when it is not input 0 as it stands (a dequantized input)."""
    x = x or ctx.x(0)
    rank = ctx.rank(0)
    n = rank - 2
    if n not in (1, 2, 3):
        raise Unsupported(f"{n}-d pooling")
    kernel, strides, dilations = checks.pool_attrs(ctx, n)
    begins, ends = auto_pads(ctx, kernel, strides, dilations)
    checks.pool_window(ctx, kernel, strides, dilations, begins, ends)
    ceil = bool(ctx.attr("ceil_mode", 0))
    include_pad = bool(ctx.attr("count_include_pad", 0))
    if kind == "avg" and any(d != 1 for d in dilations):
        return _dilated_average(ctx, kernel, strides, dilations, begins, ends, x)

    pad = [max(b, e) for b, e in zip(begins, ends)]
    crop = [((p - b) // s, (p - e) // s) for p, b, e, s in zip(pad, begins, ends, strides)]
    can_crop = all((p - b) % s == 0 and (p - e) % s == 0 for p, b, e, s in zip(pad, begins, ends, strides))
    fits = all(p <= k // 2 for p, k in zip(pad, kernel))
    if begins != ends and (ceil or not can_crop):
        fits = False

    def arguments(padding):
        args = [f"kernel_size={ctx.lit(one_or_all(kernel))}"]
        if strides != kernel:
            args.append(f"stride={ctx.lit(one_or_all(strides))}")
        if any(padding):
            args.append(f"padding={ctx.lit(one_or_all(padding))}")
        if kind == "max" and any(d != 1 for d in dilations):
            args.append(f"dilation={ctx.lit(one_or_all(dilations))}")
        if ceil:
            args.append("ceil_mode=True")
        if kind == "avg" and any(padding) and not include_pad:
            args.append("count_include_pad=False")
        return args

    cls = f"nn.{'MaxPool' if kind == 'max' else 'AvgPool'}{n}d"
    if ctx.output_used(1):
        if not fits or any(b or e for b, e in crop):
            raise Unsupported("the Indices output with padding PyTorch's max_pool cannot take")
        from ..lower import Multi

        fn = ctx.helper("max_pool_with_indices", MAX_POOL_INDICES)
        column = ", column_major=True" if ctx.attr("storage_order", 0) else ""
        return Multi(f"{fn}({x}, {ctx.lit(tuple(kernel))}, {ctx.lit(tuple(strides))}, {ctx.lit(tuple(pad))}, "
                     f"{ctx.lit(tuple(dilations))}, ceil_mode={ceil}{column})")
    if fits:
        layer = ctx.layer(f"{cls}({', '.join(arguments(pad))})", hint=f"{kind}pool")
        expr = f"{layer}({x})"
        if any(b or e for b, e in crop):
            expr += "[" + ", ".join([":", ":"] + [f"{b}:{-e if e else ''}" for b, e in crop]) + "]"
        return expr
    # Pad explicitly; for an average that must not count padding, divide by the pooled count of real cells.
    padding = ctx.lit(torch_pad(begins, ends))
    fn = f"F.{'max' if kind == 'max' else 'avg'}_pool{n}d"
    args = ", ".join(arguments([0] * n))
    crop = _ceil_crop(ctx, kernel, strides, dilations, begins, ends) if ceil else ""
    if kind == "max":
        dtype = ctx.dtype(0)  # QOperator graphs max-pool uint8 and int8 tensors
        lowest = str(int(np.iinfo(dtype).min)) if dtype is not None and dtype.kind in "iu" else "float('-inf')"
        return f"{fn}(F.pad({x}, {padding}, value={lowest}), {args}){crop}"
    pooled = f"{fn}(F.pad({x}, {padding}), {args})"
    if include_pad:
        return pooled + crop
    expr = f"{pooled} / {fn}(F.pad(torch.ones_like({x}[:1, :1]), {padding}), {args})"
    return f"({expr}){crop}" if crop else expr


def _ceil_crop(ctx, kernel, strides, dilations, begins, ends) -> str:
    """In ceil mode ONNX drops a window that starts in the end padding; pooling an explicitly padded input
    keeps it. The index that drops it again, where the spatial size is known."""
    shape = ctx.shape(0)
    index, cropped = [":", ":"], False
    for size, k, s, d, b, e in zip((shape or [None] * (len(kernel) + 2))[2:], kernel, strides, dilations, begins, ends):
        if not isinstance(size, int):
            index.append(":")
            continue
        padded, extent = size + b + e, (k - 1) * d + 1
        out = -(-(padded - extent) // s) + 1
        kept = out - 1 if (out - 1) * s >= padded else out
        onnx_out = out - 1 if (out - 1) * s >= size + b else out
        index.append(f":{onnx_out}" if onnx_out < kept else ":")
        cropped = cropped or onnx_out < kept
    return f"[{', '.join(index)}]" if cropped else ""


@register_op("MaxPool", since=1)
def max_pool(ctx):
    if ctx.attr("storage_order", 0) not in (0, 1) or (ctx.attr("storage_order", 0) and ctx.rank(0) != 4):
        raise checks.Contradiction(f"attribute storage_order={ctx.attr('storage_order')!r} must be 0, or 1 for a 2-d pool")
    return _pool(ctx, "max")


@register_op("AveragePool", since=1)
def average_pool(ctx):
    return _pool(ctx, "avg")


@register_op("GlobalAveragePool", since=1)
def global_average_pool(ctx):
    rank = ctx.rank(0)
    if rank == 4:
        return f"F.adaptive_avg_pool2d({ctx.x(0)}, 1)"
    return f"torch.mean({ctx.x(0)}, dim={ctx.lit(tuple(range(2, rank)))}, keepdim=True)"


@register_op("GlobalMaxPool", since=1)
def global_max_pool(ctx):
    rank = ctx.rank(0)
    if rank == 4:
        return f"F.adaptive_max_pool2d({ctx.x(0)}, 1)"
    return f"torch.amax({ctx.x(0)}, dim={ctx.lit(tuple(range(2, rank)))}, keepdim=True)"


LP_POOL = '''
def lp_pool(x, p, kernel, stride, dilation, pads, extra=None):
    # ONNX LpPool: (sum of |x|^p over each window)^(1/p); PyTorch's lp_pool raises x, not |x|, to the p.
    return window_sum(x.abs() ** p, kernel, stride, dilation, pads, extra) ** (1.0 / p)
'''


@register_op("LpPool", since=1)
def lp_pool(ctx):
    n = ctx.rank(0) - 2
    if n not in (1, 2, 3):
        raise Unsupported(f"{n}-d LpPool")
    kernel, strides, dilations = checks.pool_attrs(ctx, n)
    begins, ends = auto_pads(ctx, kernel, strides, dilations)
    checks.pool_window(ctx, kernel, strides, dilations, begins, ends)
    p = ctx.attr("p", 2)
    if not checks.is_int(p) and not isinstance(p, float) or not p > 0:
        raise checks.Contradiction(f"attribute p={p!r} must be a positive number")
    x = ctx.x(0)
    plain = n < 3 and all(d == 1 for d in dilations) and not ctx.attr("ceil_mode", 0) and float(p) % 2 == 0
    if plain:  # an even p: x ** p is |x| ** p, and F.lp_pool is exact
        if any(begins) or any(ends):
            x = f"F.pad({x}, {ctx.lit(torch_pad(begins, ends))})"
        size = kernel[0] if n == 1 else tuple(kernel)
        stride = strides[0] if n == 1 else tuple(strides)
        return f"F.lp_pool{n}d({x}, {ctx.lit(float(p))}, {ctx.lit(size)}, stride={ctx.lit(stride)})"
    args = [x, ctx.lit(float(p)), ctx.lit(tuple(kernel)), ctx.lit(tuple(strides)), ctx.lit(tuple(dilations)),
            ctx.lit(torch_pad(begins, ends))]
    if ctx.attr("ceil_mode", 0):
        extra = _ceil_extra(ctx, kernel, strides, dilations, begins, ends)
        if any(extra):
            args.append(f"extra={ctx.lit(torch_pad([0] * len(extra), extra))}")
    ctx.helper("window_sum", WINDOW_SUM)
    return f"{ctx.helper('lp_pool', LP_POOL)}({', '.join(args)})"
