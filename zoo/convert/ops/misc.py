"""Less common ops: windows, Det, BitCast, ReverseSequence, Col2Im, AffineGrid, MaxUnpool, Unique, DFT, ..."""
from __future__ import annotations

from .. import checks
from ..errors import Unsupported
from ..lower import Multi
from ..registry import register_op
from ._util import axis as norm_axis


def _window(fn: str, extra: str = ""):
    def handler(ctx):
        dtype = ctx.torch_dtype(ctx.out_dtype(0))
        periodic = bool(ctx.attr("periodic", 1))
        return f"{fn}(int({ctx.x(0)}), periodic={periodic}{extra}, dtype={dtype})"

    return handler


register_op("HannWindow", since=17)(_window("torch.hann_window"))
register_op("BlackmanWindow", since=17)(_window("torch.blackman_window"))
register_op("HammingWindow", since=17)(_window("torch.hamming_window", ", alpha=25 / 46, beta=21 / 46"))


@register_op("Det", since=11)
def det(ctx):
    return f"torch.linalg.det({ctx.x(0)})"


@register_op("BitCast", since=26)
def bit_cast(ctx):
    src, dst = ctx.dtype(0), ctx.out_dtype(0)
    if src is None or dst is None or src.itemsize != dst.itemsize:
        raise Unsupported("a BitCast between types of different sizes")
    return f"{ctx.x(0)}.view({ctx.torch_dtype(dst)})"


REVERSE_SEQUENCE = '''
def reverse_sequence(x, lengths, batch_axis, time_axis):
    # Reverse the first lengths[b] steps along time_axis of every batch entry b.
    out = x.clone()
    for b, n in enumerate(lengths.tolist()):
        index = [slice(None)] * x.dim()
        index[batch_axis] = b
        index[time_axis] = slice(0, n)
        out[tuple(index)] = x[tuple(index)].flip(time_axis - (batch_axis < time_axis))
    return out
'''


@register_op("ReverseSequence", since=10)
def reverse_sequence(ctx):
    fn = ctx.helper("reverse_sequence", REVERSE_SEQUENCE)
    return f"{fn}({ctx.x(0)}, {ctx.x(1)}, {int(ctx.attr('batch_axis', 1))}, {int(ctx.attr('time_axis', 0))})"


COL2IM = '''
def col2im(x, image_shape, block_shape, dilations, pads, strides):
    # ONNX Col2Im in any number of dimensions: each column entry is added at its place in the padded image.
    n = len(image_shape)
    padded = [s + b + e for s, b, e in zip(image_shape, pads[:n], pads[n:])]
    blocks = [(p - d * (k - 1) - 1) // s + 1 for p, k, d, s in zip(padded, block_shape, dilations, strides)]
    place = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(n):  # flat index in the padded image of (block offset k, block position b), per axis
        pos = torch.arange(block_shape[i], device=x.device)[:, None] * dilations[i]
        pos = pos + torch.arange(blocks[i], device=x.device)[None, :] * strides[i]
        shape = [1] * (2 * n)
        shape[i], shape[n + i] = block_shape[i], blocks[i]
        place = place * padded[i] + pos.reshape(shape)
    cols = x.reshape(x.shape[0], -1, place.numel())
    y = x.new_zeros((*cols.shape[:2], torch.Size(padded).numel())).index_add_(2, place.flatten(), cols)
    y = y.reshape(*cols.shape[:2], *padded)
    for i in range(n):
        y = y.narrow(2 + i, pads[i], image_shape[i])
    return y
'''


@register_op("Col2Im", since=18)
def col2im(ctx):
    n = (ctx.shape(1) or (None,))[0]
    if not isinstance(n, int) or n < 1:
        raise Unsupported("an image shape of unknown length")
    dilations = checks.ints(ctx, "dilations", length=n, minimum=1, default=[1] * n, implied=f"an image of rank {n}")
    strides = checks.ints(ctx, "strides", length=n, minimum=1, default=[1] * n, implied=f"an image of rank {n}")
    pads = checks.ints(ctx, "pads", length=2 * n, minimum=0, default=[0] * 2 * n, implied=f"an image of rank {n}")
    if n == 2 and pads[:n] == pads[n:]:
        return (f"F.fold({ctx.x(0)}, {ctx.int_list(1)}, {ctx.int_list(2)}, dilation={ctx.lit(tuple(dilations))}, "
                f"padding={ctx.lit(tuple(pads[:n]))}, stride={ctx.lit(tuple(strides))})")
    args = [ctx.x(0), ctx.int_list(1), ctx.int_list(2), ctx.lit(dilations), ctx.lit(pads), ctx.lit(strides)]
    return f"{ctx.helper('col2im', COL2IM)}({', '.join(args)})"


@register_op("AffineGrid", since=20)
def affine_grid(ctx):
    align = bool(ctx.attr("align_corners", 0))
    return f"F.affine_grid({ctx.x(0)}, {ctx.int_list(1)}, align_corners={align})"


MAX_UNPOOL = '''
def max_unpool(x, indices, kernel, stride, pads, output_shape=None):
    # ONNX MaxUnpool: each value goes to its index, counted across the whole tensor of the inferred output
    # (as MaxPool numbers them, unlike F.max_unpool's per-plane indices); output_shape pads it at the end.
    n = len(kernel)
    size = [(d - 1) * s - b - e + k for d, s, b, e, k in zip(x.shape[2:], stride, pads[:n], pads[n:], kernel)]
    y = x.new_zeros(x.shape[0] * x.shape[1] * torch.Size(size).numel())
    y = y.scatter(0, indices.flatten(), x.flatten()).reshape(*x.shape[:2], *size)
    if output_shape is not None:
        order = []
        for target, d in zip(reversed(list(output_shape)[2:]), reversed(size)):
            order += [0, int(target) - d]
        y = F.pad(y, order)
    return y
'''


@register_op("MaxUnpool", since=9)
def max_unpool(ctx):
    n = ctx.rank(0) - 2
    if n not in (1, 2, 3):
        raise Unsupported(f"{n}-d MaxUnpool")
    kernel, strides, _ = checks.pool_attrs(ctx, n)
    pads = checks.ints(ctx, "pads", length=2 * n, minimum=0, default=[0] * 2 * n, implied=f"the input's rank {n + 2}")
    args = [ctx.x(0), ctx.x(1), ctx.lit(tuple(kernel)), ctx.lit(tuple(strides)), ctx.lit(tuple(pads))]
    if ctx.has_input(2):
        args.append(ctx.int_list(2))
    return f"{ctx.helper('max_unpool', MAX_UNPOOL)}({', '.join(args)})"


UNIQUE = '''
def unique(x, axis=None, sort=True):
    # ONNX Unique: values, index of first occurrence, inverse indices, counts.
    flat = x.flatten() if axis is None else x
    values, inverse, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True,
                                           dim=axis)
    positions = torch.arange(inverse.numel(), device=x.device)
    first = torch.full((values.shape[0 if axis is None else axis],), inverse.numel(), device=x.device,
                       dtype=torch.int64).scatter_reduce(0, inverse, positions, "amin")
    if not sort:
        order = torch.argsort(first)
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))
        values = values.index_select(0 if axis is None else axis, order)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    return values, first, inverse, counts
'''


@register_op("Unique", since=11)
def unique(ctx):
    fn = ctx.helper("unique", UNIQUE)
    axis = ctx.attr("axis")
    axis = "None" if axis is None else str(norm_axis(ctx, int(axis), ctx.rank(0)))
    sort = bool(ctx.attr("sorted", 1))
    n = len(ctx.node.outputs)
    call = f"{fn}({ctx.x(0)}, {axis}, {sort})"
    return Multi(call if n == 4 else f"{call}[:{n}]") if n > 1 else f"{call}[0]"


DFT = '''
def dft(x, length=None, axis=1, inverse=False, onesided=False):
    # ONNX DFT: the last dimension holds (real,) or (real, imaginary).
    signal = torch.view_as_complex(x.contiguous()) if x.shape[-1] == 2 else x[..., 0].to(torch.complex64)
    axis = axis % (x.dim() - 1)
    if inverse and onesided:  # a one-sided spectrum back to its real signal, (..., 1) out
        n = 2 * (signal.shape[axis] - 1) if length is None else length
        return torch.fft.irfft(signal, n=n, dim=axis).unsqueeze(-1).to(x.dtype)
    if inverse:
        y = torch.fft.ifft(signal, n=length, dim=axis)
    else:
        y = torch.fft.fft(signal, n=length, dim=axis)
    if onesided:
        y = y.narrow(axis, 0, y.shape[axis] // 2 + 1)
    return torch.view_as_real(y).to(x.dtype)
'''


@register_op("DFT", since=17)
def dft(ctx):
    fn = ctx.helper("dft", DFT)
    length = f"int({ctx.x(1)})" if ctx.has_input(1) else "None"
    if ctx.opset >= 20:
        axis = f"int({ctx.x(2)})" if ctx.has_input(2) else "-2"
    else:
        axis = str(int(ctx.attr("axis", 1)))
    return (f"{fn}({ctx.x(0)}, {length}, {axis}, inverse={bool(ctx.attr('inverse', 0))}, "
            f"onesided={bool(ctx.attr('onesided', 0))})")


CENTER_CROP_PAD = '''
def center_crop_pad(x, shape, axes):
    # Crop or zero-pad each listed axis to the target size, centred.
    for a, target in zip(axes, shape.tolist()):
        a %= x.dim()
        size = x.shape[a]
        if size > target:
            x = x.narrow(a, (size - target) // 2, target)
        elif size < target:
            before = (target - size) // 2
            x = F.pad(x, [0, 0] * (x.dim() - 1 - a) + [before, target - size - before])
    return x
'''


@register_op("CenterCropPad", since=18)
def center_crop_pad(ctx):
    shape = ctx.const(1)
    if shape is None or ctx.shape(0) is None or not all(isinstance(d, int) for d in ctx.shape(0)):
        fn = ctx.helper("center_crop_pad", CENTER_CROP_PAD)
        return f"{fn}({ctx.x(0)}, {ctx.x(1)}, {ctx.lit(tuple(ctx.attr('axes') or range(ctx.rank(0))))})"
    axes = ctx.attr("axes") or list(range(ctx.rank(0)))
    rank = ctx.rank(0)
    in_shape = ctx.shape(0)
    expr = ctx.x(0)
    for a, target in zip(axes, [int(v) for v in shape]):
        a %= rank
        size = in_shape[a] if in_shape else None
        if not isinstance(size, int):
            raise Unsupported("an input dimension of unknown size")
        if size > target:
            start = (size - target) // 2
            expr = f"{expr}.narrow({a}, {start}, {target})"
        elif size < target:
            before = (target - size) // 2
            pads = [0, 0] * (rank - 1 - a) + [before, target - size - before]
            expr = f"F.pad({expr}, {ctx.lit(tuple(pads))})"
    return expr

