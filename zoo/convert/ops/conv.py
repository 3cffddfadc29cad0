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


DEFORM_CONV = '''
def deform_conv2d(x, weight, offset, bias=None, mask=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                  groups=1, offset_groups=1):
    # ONNX DeformConv: every kernel tap samples the input bilinearly at its own offset (zero outside the
    # image) and is scaled by the mask; the samples are then contracted with the weight as a convolution.
    n, c, h, w = x.shape
    out_c, _, kh, kw = weight.shape
    oh, ow = offset.shape[2:]
    k = kh * kw
    offset = offset.reshape(n, offset_groups, k, 2, oh, ow)
    tap = torch.arange(k, device=x.device)
    rows = (torch.arange(oh, device=x.device) * stride[0] - padding[0]).reshape(-1, 1)
    cols = torch.arange(ow, device=x.device) * stride[1] - padding[1]
    y = rows + (tap // kw * dilation[0]).reshape(-1, 1, 1) + offset[:, :, :, 0]
    xs = cols + (tap % kw * dilation[1]).reshape(-1, 1, 1) + offset[:, :, :, 1]
    image = x.reshape(n, offset_groups, c // offset_groups, h * w)
    y0, x0 = torch.floor(y), torch.floor(xs)
    sampled = 0
    for yi, xi in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        weight_i = (1 - (y - yi).abs()) * (1 - (xs - xi).abs()) * ((yi >= 0) & (yi < h) & (xi >= 0) & (xi < w))
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long().flatten(2).unsqueeze(2)
        values = torch.gather(image, 3, index.expand(-1, -1, c // offset_groups, -1))
        sampled = sampled + values * weight_i.flatten(2).unsqueeze(2)
    sampled = sampled.reshape(n, offset_groups, c // offset_groups, k, oh, ow)
    if mask is not None:
        sampled = sampled * mask.reshape(n, offset_groups, 1, k, oh, ow)
    patches = sampled.reshape(n, groups, c // groups * k, oh * ow)
    out = torch.einsum("gok,ngkp->ngop", weight.reshape(groups, out_c // groups, -1), patches)
    out = out.reshape(n, out_c, oh, ow)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)
'''


@register_op("DeformConv", since=19)
def deform_conv(ctx):
    shape = ctx.shape(1)
    if shape is None or len(shape) != 4:
        raise Unsupported("DeformConv other than 2-d, or with a weight of unknown rank")
    _, kernel, strides, dilations, group = checks.conv_attrs(ctx, shape)
    offset_groups = checks.integer(ctx, "offset_group", 1, minimum=1)
    channels = (ctx.shape(0) or (None, None))[1]
    if checks.is_int(channels) and channels % offset_groups:
        raise checks.Contradiction(f"attribute offset_group={offset_groups} does not divide the input's "
                                   f"{channels} channels")
    begins, _ = auto_pads(ctx, kernel, strides, dilations)
    args = [ctx.x(0), ctx.x(1), ctx.x(2)]
    if ctx.has_input(3):
        args.append(f"bias={ctx.x(3)}")
    if ctx.has_input(4):
        args.append(f"mask={ctx.x(4)}")
    args += [f"stride={ctx.lit(tuple(strides))}", f"padding={ctx.lit(tuple(begins))}",
             f"dilation={ctx.lit(tuple(dilations))}"]
    if group != 1:
        args.append(f"groups={group}")
    if offset_groups != 1:
        args.append(f"offset_groups={offset_groups}")
    return f"{ctx.helper('deform_conv2d', DEFORM_CONV)}({', '.join(args)})"
