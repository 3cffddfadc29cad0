"""MaxPool, AveragePool and the global pools.

PyTorch pools pad symmetrically; ONNX (and Caffe's ceil mode re-expressed as pads) may not. Asymmetric
pads are met by padding symmetrically to the larger side and slicing off the extra output rows, which is
exact whenever the difference is a multiple of the stride; otherwise the input is padded explicitly.
"""
from __future__ import annotations

from .. import checks
from ..errors import Unsupported
from ..registry import register_op
from ._util import auto_pads, one_or_all, torch_pad


def _pool(ctx, kind: str):
    if ctx.output_used(1):
        raise Unsupported("the Indices output")
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
        raise Unsupported("dilated AveragePool")

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
    x = ctx.x(0)
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
        return f"{fn}(F.pad({x}, {padding}, value=float('-inf')), {args}){crop}"
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
    if ctx.attr("storage_order", 0):
        raise Unsupported("storage_order=1")
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


@register_op("LpPool", since=1)
def lp_pool(ctx):
    n = ctx.rank(0) - 2
    if n not in (1, 2):
        raise Unsupported(f"{n}-d LpPool")
    kernel, strides, dilations = checks.pool_attrs(ctx, n)
    begins, ends = auto_pads(ctx, kernel, strides, dilations)
    checks.pool_window(ctx, kernel, strides, dilations, begins, ends)
    if any(d != 1 for d in dilations) or ctx.attr("ceil_mode", 0):
        raise Unsupported("dilated or ceil-mode LpPool")
    p = ctx.attr("p", 2)
    x = ctx.x(0)
    if any(begins) or any(ends):
        x = f"F.pad({x}, {ctx.lit(torch_pad(begins, ends))})"
    return f"F.lp_pool{n}d({x}, {ctx.lit(float(p))}, {ctx.lit(tuple(kernel))}, stride={ctx.lit(tuple(strides))})"
