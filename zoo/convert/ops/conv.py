"""Conv and ConvTranspose as nn.Conv{1,2,3}d / nn.ConvTranspose{1,2,3}d."""
from __future__ import annotations

from .. import checks
from ..errors import Unsupported
from ..registry import register_op
from ._util import auto_pads, one_or_all, torch_pad


def _geometry(ctx, weight_shape, transpose=False):
    """Kernel, strides and dilations, checked against the weight and the input before any layer is built."""
    n, kernel, strides, dilations, _ = checks.conv_attrs(ctx, weight_shape, transpose=transpose)
    return n, kernel, strides, dilations


@register_op("Conv", since=1)
def conv(ctx):
    weight = ctx.const(1)
    bias = ctx.const(2) if ctx.has_input(2) else None
    if weight is None or (ctx.has_input(2) and bias is None):
        return _functional_conv(ctx)
    n, kernel, strides, dilations = _geometry(ctx, weight.shape)
    begins, ends = auto_pads(ctx, kernel, strides, dilations)
    checks.conv_output(ctx, weight.shape, kernel, strides, dilations, begins, ends)
    groups = int(ctx.attr("group", 1))
    args = [str(weight.shape[1] * groups), str(weight.shape[0]), f"kernel_size={ctx.lit(one_or_all(kernel))}"]
    if any(s != 1 for s in strides):
        args.append(f"stride={ctx.lit(one_or_all(strides))}")
    symmetric = begins == ends
    if symmetric and any(begins):
        args.append(f"padding={ctx.lit(one_or_all(begins))}")
    if any(d != 1 for d in dilations):
        args.append(f"dilation={ctx.lit(one_or_all(dilations))}")
    if groups != 1:
        args.append(f"groups={groups}")
    tensors = {"weight": weight}
    if bias is None:
        args.append("bias=False")
    else:
        tensors["bias"] = bias
    layer = ctx.layer(f"nn.Conv{n}d({', '.join(args)})", **tensors)
    x = ctx.x(0)
    if not symmetric:
        x = f"F.pad({x}, {ctx.lit(torch_pad(begins, ends))})"
    return f"{layer}({x})"


def _functional_conv(ctx):
    n, kernel, strides, dilations = _geometry(ctx, ctx.shape(1) or ())
    begins, ends = auto_pads(ctx, kernel, strides, dilations)
    if checks.known(ctx.shape(1)) is not None:
        checks.conv_output(ctx, ctx.shape(1), kernel, strides, dilations, begins, ends)
    x = ctx.x(0)
    if begins != ends:
        x, begins = f"F.pad({x}, {ctx.lit(torch_pad(begins, ends))})", [0] * n
    bias = ctx.x(2) if ctx.has_input(2) else "None"
    return (f"F.conv{n}d({x}, {ctx.x(1)}, {bias}, stride={ctx.lit(tuple(strides))}, "
            f"padding={ctx.lit(tuple(begins))}, dilation={ctx.lit(tuple(dilations))}, groups={int(ctx.attr('group', 1))})")


@register_op("ConvTranspose", since=1)
def conv_transpose(ctx):
    weight = ctx.const(1)
    if weight is None:
        return _functional_conv_transpose(ctx)
    bias = ctx.const(2) if ctx.has_input(2) else None
    if ctx.has_input(2) and bias is None:
        raise Unsupported("a non-constant bias")
    n, kernel, strides, dilations = _geometry(ctx, weight.shape, transpose=True)
    groups = int(ctx.attr("group", 1))
    out_pad = list(ctx.attr("output_padding") or [0] * n)
    begins, ends, out_pad = _transpose_pads(ctx, n, kernel, strides, dilations, out_pad)
    checks.conv_output(ctx, weight.shape, kernel, strides, dilations, begins, ends, transpose=True, out_pad=out_pad)
    # PyTorch takes symmetric padding; extra end padding is cropped from the output instead.
    common = [min(b, e) for b, e in zip(begins, ends)]
    args = [str(weight.shape[0]), str(weight.shape[1] * groups), f"kernel_size={ctx.lit(one_or_all(kernel))}"]
    if any(s != 1 for s in strides):
        args.append(f"stride={ctx.lit(one_or_all(strides))}")
    if any(common):
        args.append(f"padding={ctx.lit(one_or_all(common))}")
    if any(out_pad):
        args.append(f"output_padding={ctx.lit(one_or_all(out_pad))}")
    if groups != 1:
        args.append(f"groups={groups}")
    if any(d != 1 for d in dilations):
        args.append(f"dilation={ctx.lit(one_or_all(dilations))}")
    tensors = {"weight": weight}
    if bias is None:
        args.append("bias=False")
    else:
        tensors["bias"] = bias
    layer = ctx.layer(f"nn.ConvTranspose{n}d({', '.join(args)})", **tensors)
    return _crop(f"{layer}({ctx.x(0)})", begins, ends, common)


def _crop(expr: str, begins, ends, common) -> str:
    """PyTorch takes symmetric padding; extra padding on one side is cropped from the output instead."""
    crops = [(b - c, e - c) for b, e, c in zip(begins, ends, common)]
    if any(b or e for b, e in crops):
        index = ", ".join([":", ":"] + [f"{b}:{-e if e else ''}" for b, e in crops])
        expr = f"{expr}[{index}]"
    return expr


def _transpose_pads(ctx, n, kernel, strides, dilations, out_pad) -> tuple[list[int], list[int], list[int]]:
    """ConvTranspose's (begin pads, end pads, output_padding): explicit, or what output_shape or auto_pad
    SAME_* imply for the input's size."""
    mode = ctx.attr("auto_pad", "NOTSET")
    if mode not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise checks.Contradiction(f"attribute auto_pad={mode!r} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER")
    target = checks.ints(ctx, "output_shape", minimum=1)
    if mode == "VALID" or (mode in ("NOTSET", "") and (ctx.attr("pads") or target is None)):
        pads = [0] * (2 * n) if mode == "VALID" else list(ctx.attr("pads") or [0] * (2 * n))
        return pads[:n], pads[n:], out_pad
    shape = ctx.shape(0)
    sizes = list(shape[2:]) if shape is not None else []
    if len(sizes) != n or not all(checks.is_int(d) for d in sizes):
        raise Unsupported("output_shape or auto_pad SAME with spatial sizes unknown before run time")
    if target is None:
        target = [d * s for d, s in zip(sizes, strides)]
    if len(target) < n:
        raise checks.Contradiction(f"attribute output_shape={target} has fewer than {n} spatial sizes")
    target = target[-n:]
    begins, ends, grown = [], [], []
    for d, s, k, dl, op, t in zip(sizes, strides, kernel, dilations, out_pad, target):
        total = s * (d - 1) + op + (k - 1) * dl + 1 - t
        small, big = total // 2, total - total // 2
        b, e = (small, big) if mode == "SAME_UPPER" else (big, small)
        if b < 0 or op - min(e, 0) >= max(s, dl):
            raise Unsupported(f"output_shape {target} beyond what output_padding can reach")
        begins.append(b)
        ends.append(max(e, 0))
        grown.append(op - min(e, 0))  # an output larger than the kernels reach: PyTorch's output_padding
    return begins, ends, grown


def _functional_conv_transpose(ctx):
    shape = ctx.shape(1)
    if shape is None:
        raise Unsupported("a non-constant weight of unknown rank")
    n, kernel, strides, dilations = _geometry(ctx, shape, transpose=True)
    out_pad = list(ctx.attr("output_padding") or [0] * n)
    begins, ends, out_pad = _transpose_pads(ctx, n, kernel, strides, dilations, out_pad)
    common = [min(b, e) for b, e in zip(begins, ends)]
    bias = ctx.x(2) if ctx.has_input(2) else "None"
    expr = (f"F.conv_transpose{n}d({ctx.x(0)}, {ctx.x(1)}, {bias}, stride={ctx.lit(tuple(strides))}, "
            f"padding={ctx.lit(tuple(common))}, output_padding={ctx.lit(tuple(out_pad))}, "
            f"groups={int(ctx.attr('group', 1))}, dilation={ctx.lit(tuple(dilations))})")
    return _crop(expr, begins, ends, common)
