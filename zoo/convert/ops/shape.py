"""Shape and data-movement ops: Reshape, Flatten, Concat, (Un)Squeeze, Transpose, Gather, Slice, ..."""
from __future__ import annotations

import numpy as np

from .. import checks
from ..errors import Unsupported
from ..registry import register_op
from ._util import axis as norm_axis
from ._util import wrap_negative

INT_MAX = 2**31 - 1


def _ints(array) -> list[int]:
    return [int(v) for v in np.asarray(array).reshape(-1)]


@register_op("Identity", since=1)
def identity(ctx):
    return ctx.x(0)


RESHAPE = '''
def reshape(x, shape):
    # ONNX Reshape to a shape known only at run time: a 0 keeps the input's size at that position.
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape.tolist())])
'''


@register_op("Reshape", since=1)
def reshape(ctx):
    target = ctx.attr("shape") if ctx.opset < 5 else ctx.const(1)
    x = ctx.x(0)
    if target is None:
        if ctx.opset >= 14 and ctx.attr("allowzero", 0):
            return f"{x}.reshape({ctx.x(1)}.tolist())"
        return f"{ctx.helper('reshape', RESHAPE)}({x}, {ctx.x(1)})"
    target = _ints(target)
    allow_zero = ctx.opset >= 14 and ctx.attr("allowzero", 0)
    checks.reshape_target(ctx, target, bool(allow_zero))
    if not allow_zero and 0 in target:
        dims = [f"{x}.shape[{i}]" if d == 0 else ctx.lit(d) for i, d in enumerate(target)]
        return f"{x}.reshape({', '.join(dims)})" if dims else f"{x}.reshape(())"
    return f"{x}.reshape({ctx.lit(tuple(target))})"


@register_op("Flatten", since=1)
def flatten(ctx):
    rank = ctx.rank(0)
    ax = checks.integer(ctx, "axis", 1)
    if not -rank <= ax <= rank:
        raise checks.Contradiction(f"attribute axis={ax} is outside [-{rank}, {rank}] for the input's rank {rank}")
    ax = ax + rank if ax < 0 else ax
    x = ctx.x(0)
    if ax == rank:
        return f"{x}.reshape(-1, 1)"
    if ax == 0:
        return f"{x}.reshape(1, -1)"
    if ax == 1:
        return f"torch.flatten({x}, 1)"
    return f"torch.flatten(torch.flatten({x}, {ax}), 0, {ax - 1})"


@register_op("Concat", since=1)
def concat(ctx):
    rank = ctx.value(0).rank
    if rank is not None:
        checks.axes_in_range([checks.integer(ctx, "axis", 1)], rank, "axis")
    parts = ", ".join(ctx.x(i) for i in range(ctx.num_inputs) if ctx.has_input(i))
    return f"torch.cat([{parts}], dim={int(ctx.attr('axis', 1))})"


def _axes(ctx, index: int, what: str):
    if ctx.opset < 13:
        return ctx.attr("axes")
    if not ctx.has_input(index):
        return None
    return _ints(ctx.require_const(index, what))


def _static_out(ctx):
    shape = ctx.out_shape(0)
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise Unsupported("non-constant axes and an output shape unknown before run time")
    return f"{ctx.x(0)}.reshape({ctx.lit(tuple(shape))})"


@register_op("Unsqueeze", since=1)
def unsqueeze(ctx):
    if ctx.opset >= 13 and ctx.has_input(1) and ctx.const(1) is None:
        return _static_out(ctx)
    axes = _axes(ctx, 1, "axes")
    if ctx.value(0).rank is None and (len(axes) == 1 or min(axes) >= 0):
        # torch counts a negative unsqueeze axis from the end of the output, as ONNX does: no rank needed
        expr = ctx.x(0)
        for a in sorted(axes):
            expr = f"{expr}.unsqueeze({a})"
        return expr
    out_rank = ctx.rank(0) + len(axes)
    expr = ctx.x(0)
    for a in sorted(a % out_rank for a in axes):
        expr = f"{expr}.unsqueeze({a})"
    return expr


@register_op("Squeeze", since=1)
def squeeze(ctx):
    if ctx.opset >= 13 and ctx.has_input(1) and ctx.const(1) is None:
        return _static_out(ctx)
    axes = _axes(ctx, 1, "axes")
    if axes is None:
        return f"{ctx.x(0)}.squeeze()"
    if ctx.value(0).rank is None:  # torch.squeeze reads negative dims as ONNX does
        dims = tuple(axes)
        return f"{ctx.x(0)}.squeeze({dims[0]})" if len(dims) == 1 else f"{ctx.x(0)}.squeeze({ctx.lit(dims)})"
    rank = ctx.rank(0)
    dims = tuple(sorted(a % rank for a in axes))
    return f"{ctx.x(0)}.squeeze({dims[0]})" if len(dims) == 1 else f"{ctx.x(0)}.squeeze({ctx.lit(dims)})"


@register_op("Transpose", since=1)
def transpose(ctx):
    perm = ctx.attr("perm")
    if perm is None:
        perm = list(reversed(range(ctx.rank(0))))
    rank = ctx.value(0).rank
    if sorted(int(p) for p in perm) != list(range(len(perm))) or (rank is not None and len(perm) != rank):
        raise checks.Contradiction(f"attribute perm={[int(p) for p in perm]} is not a permutation of the input's "
                                   f"{rank if rank is not None else len(perm)} axes")
    return f"{ctx.x(0)}.permute({', '.join(str(int(p)) for p in perm)})"


@register_op("Shape", since=1)
def shape(ctx):
    x = ctx.x(0)
    start, end = ctx.attr("start"), ctx.attr("end")
    dims = f"{x}.shape"
    if start is not None or end is not None:
        dims += f"[{'' if not start else int(start)}:{'' if end is None else int(end)}]"
    return f"torch.tensor({dims}, dtype=torch.int64, device={x}.device)"


@register_op("Size", since=1)
def size(ctx):
    x = ctx.x(0)
    return f"torch.tensor({x}.numel(), dtype=torch.int64, device={x}.device)"


@register_op("Gather", since=1)
def gather(ctx):
    rank = ctx.rank(0)
    ax = norm_axis(ctx, int(ctx.attr("axis", 0)), rank)
    indices = ctx.const(1)
    if indices is not None and indices.ndim == 0:
        index = ctx.lit(int(indices))
    else:
        index = ctx.x(1)
    return f"{ctx.x(0)}[{':, ' * ax}{index}]"


@register_op("GatherElements", since=11)
def gather_elements(ctx):
    rank = ctx.rank(0)
    ax = norm_axis(ctx, int(ctx.attr("axis", 0)), rank)
    x, idx = ctx.x(0), ctx.x(1)
    return f"torch.gather({x}, {ax}, {wrap_negative(idx, f'{x}.shape[{ax}]')})"


@register_op("Slice", since=1)
def slice_(ctx):
    rank = ctx.value(0).rank
    if rank is None:  # constant non-negative axes index only the leading dimensions: the rank is not needed
        axes = ctx.attr("axes") if ctx.opset < 10 else ctx.const(3) if ctx.has_input(3) else None
        if any(ctx.has_input(i) and ctx.const(i) is None for i in range(1, 5)) and ctx.opset >= 10:
            axes = None  # a run-time slice writes every dimension
        rank = max(_ints(axes)) + 1 if axes is not None and len(axes) and min(_ints(axes)) >= 0 else ctx.rank(0)
    if ctx.opset < 10:
        starts, ends, axes, steps = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None
    elif any(ctx.has_input(i) and ctx.const(i) is None for i in range(1, 5)):
        return _runtime_slice(ctx, rank)
    else:
        starts = _ints(ctx.require_const(1, "starts"))
        ends = _ints(ctx.require_const(2, "ends"))
        axes = _ints(ctx.require_const(3, "axes")) if ctx.has_input(3) else None
        steps = _ints(ctx.require_const(4, "steps")) if ctx.has_input(4) else None
    if axes is not None:
        checks.axes_in_range(axes, rank)
    if steps is not None and 0 in steps:
        raise checks.Contradiction(f"the steps {list(steps)} hold a 0")
    if len({len(starts), len(ends), len(axes if axes is not None else starts), len(steps or starts)}) != 1:
        raise checks.Contradiction(f"starts {list(starts)}, ends {list(ends)}, axes and steps differ in length")
    axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
    steps = steps or [1] * len(starts)
    index = [":"] * rank
    flips = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st < 0:
            bounds = _flipped_bounds((ctx.shape(0) or [None] * rank)[a], s, e)
            if bounds is None:
                fn = ctx.helper("slice_axes", SLICE)
                return (f"{fn}({ctx.x(0)}, {ctx.lit(list(starts))}, {ctx.lit(list(ends))}, {ctx.lit(list(axes))}, "
                        f"{ctx.lit(list(steps))})")
            flips.append(a)
            s, e, st = bounds[0], bounds[1], -st
        s_txt = "" if s == 0 else str(s)
        e_txt = "" if e >= INT_MAX else str(max(e, -INT_MAX))
        index[a] = f"{s_txt}:{e_txt}" + ("" if st == 1 else f":{st}")
    while index and index[-1] == ":":
        index.pop()
    x = ctx.x(0)
    if flips:  # PyTorch has no negative steps: flip, then slice forward
        x = f"{x}.flip({ctx.lit(tuple(flips)) if len(flips) > 1 else flips[0]})"
    if not index:
        return x
    return f"{x}[{', '.join(index)}]"


def _flipped_bounds(size, start: int, end: int) -> tuple[int, int] | None:
    """(start, end) on the flipped axis for ONNX's negative-step bounds; None when that needs the size."""
    if (start == -1 or start >= INT_MAX) and end <= -INT_MAX:
        return 0, INT_MAX  # the whole axis reversed, whatever its size
    if not isinstance(size, int):
        return None
    # ONNX clamps starts to [0, size - 1] and ends to [-1, size - 1] for negative steps.
    start = min(max(start + size if start < 0 else start, 0), size - 1)
    end = min(max(end + size if end < 0 else end, -1), size - 1)
    return size - 1 - start, size - 1 - end


SLICE = '''
def slice_axes(x, starts, ends, axes, steps=None):
    # ONNX Slice with arguments known only at run time; PyTorch has no negative steps, so flip first.
    as_list = lambda v: v if isinstance(v, list) else v.tolist()
    index = [slice(None)] * x.dim()
    steps = [1] * len(as_list(axes)) if steps is None else as_list(steps)
    for s, e, a, st in zip(as_list(starts), as_list(ends), as_list(axes), steps):
        a %= x.dim()
        if st < 0:
            n = x.shape[a]
            s = min(max(s + n if s < 0 else s, 0), n - 1)
            e = min(max(e + n if e < 0 else e, -1), n - 1)
            x, s, e, st = x.flip(a), n - 1 - s, n - 1 - e, -st
        index[a] = slice(s, e, st)
    return x[tuple(index)]
'''


def _runtime_slice(ctx, rank):
    """starts/ends/axes/steps given at run time: one slice per entry, their count known from the shape."""
    count = (ctx.shape(1) or (None,))[0]
    if not isinstance(count, int):
        raise Unsupported("a Slice whose number of axes is unknown")
    axes = ctx.const(3) if ctx.has_input(3) else np.arange(count)
    if axes is None:
        fn = ctx.helper("slice_axes", SLICE)
        steps = ctx.x(4) if ctx.has_input(4) else "None"
        return f"{fn}({ctx.x(0)}, {ctx.x(1)}, {ctx.x(2)}, {ctx.x(3)}, {steps})"
    index = [":"] * rank
    for i, a in enumerate(_ints(axes)):
        step = f":int({ctx.x(4)}[{i}])" if ctx.has_input(4) else ""
        index[a % rank] = f"int({ctx.x(1)}[{i}]):int({ctx.x(2)}[{i}]){step}"
    return f"{ctx.x(0)}[{', '.join(index)}]"


@register_op("Expand", since=8)
def expand(ctx):
    if ctx.const(1) is not None:
        checks.expand_target(ctx, _ints(ctx.const(1)))
    x = ctx.x(0)
    return f"{x}.expand(torch.broadcast_shapes({x}.shape, {ctx.int_list(1)}))"


@register_op("Tile", since=6)
def tile(ctx):
    if ctx.const(1) is not None:
        checks.tile_repeats(ctx, _ints(ctx.const(1)))
    return f"{ctx.x(0)}.repeat({ctx.int_list(1)})"


@register_op("Split", since=1)
def split(ctx):
    from ..lower import Multi

    ax = int(ctx.attr("axis", 0))
    if ctx.value(0).rank is not None or ax < 0:  # a non-negative axis needs no rank (a Squeeze without axes)
        ax = norm_axis(ctx, ax, ctx.rank(0))
    n = len(ctx.node.outputs)
    if ctx.opset >= 13 and ctx.has_input(1) and ctx.const(1) is None:
        return Multi(f"torch.split({ctx.x(0)}, {ctx.x(1)}.tolist(), dim={ax})")
    sizes = ctx.attr("split") if ctx.opset < 13 else (_ints(ctx.require_const(1, "split")) if ctx.has_input(1) else None)
    if not sizes:
        shape = ctx.shape(0)
        dim = shape[ax] if shape is not None else None
        if not isinstance(dim, int):  # chunk's sizes are ONNX's: ceil(dim / n), the last one smaller
            return Multi(f"torch.chunk({ctx.x(0)}, {n}, dim={ax})")
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    sizes = [int(v) for v in sizes]
    dim = (ctx.shape(0) or [None] * (ax + 1))[ax]
    if any(v < 0 for v in sizes) or len(sizes) != n or (isinstance(dim, int) and sum(sizes) != dim):
        raise checks.Contradiction(f"the split sizes {sizes} do not divide axis {ax} of size {dim} into {n} outputs")
    return Multi(f"torch.split({ctx.x(0)}, {ctx.lit(list(int(s) for s in sizes))}, dim={ax})")


@register_op("Cast", since=1)
@register_op("CastLike", since=15)
def cast(ctx):
    to = ctx.out_dtype(0)
    if to is None:
        raise Unsupported("unknown target type")
    if to.name.startswith("float8") and ctx.attr("saturate", 1):
        # ONNX saturates out-of-range values to the largest finite float8; PyTorch's cast does not.
        limit = f"torch.finfo({ctx.torch_dtype(to)}).max"
        return f"{ctx.x(0)}.clamp(-{limit}, {limit}).to({ctx.torch_dtype(to)})"
    if to.name == "float8_e4m3fn":
        # saturate=0: ONNX gives NaN for what rounds beyond 448 (above 464; 464 ties to even, to 448) and for
        # infinities; PyTorch's cast saturates there. (e5m2 has infinities and casts as ONNX asks.)
        return f"torch.where({ctx.x(0)}.abs() <= 464, {ctx.x(0)}, torch.nan).to(torch.float8_e4m3fn)"
    return f"{ctx.x(0)}.to({ctx.torch_dtype(to)})"


@register_op("ConstantOfShape", since=9)
def constant_of_shape(ctx):
    value = ctx.attr("value")
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value)
    dtype = ctx.torch_dtype(fill.dtype)
    if ctx.const(0) is not None:
        dims = _ints(ctx.const(0))
        if any(d < 0 for d in dims):
            raise checks.Contradiction(f"the shape input {dims} holds a negative dimension")
        checks.output_fits(dims, "ConstantOfShape", fill.dtype.itemsize)
    return f"torch.full({ctx.x(0)}.tolist(), {ctx.lit(fill.reshape(-1)[0])}, dtype={dtype})"


# ONNX Pad mode -> F.pad mode
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}

PAD = '''
def pad(x, pads, axes=None, mode="constant", value=0.0):
    # ONNX Pad on any axes, pads [begin per axis..., end per axis...] possibly known only at run time.
    as_list = lambda v: v if isinstance(v, (list, tuple)) else v.tolist()
    pads = [int(p) for p in as_list(pads)]
    axes = list(range(x.dim())) if axes is None else [int(a) % x.dim() for a in as_list(axes)]
    if mode == "constant":
        begin, end = dict(zip(axes, pads[:len(axes)])), dict(zip(axes, pads[len(axes):]))
        order = []
        for a in reversed(range(x.dim())):
            order += [begin.get(a, 0), end.get(a, 0)]
        return F.pad(x, order, value=float(value))
    # F.pad's other modes reach only the last dimensions; an index per axis reaches any.
    for a, b, e in zip(axes, pads[:len(axes)], pads[len(axes):]):
        n = x.shape[a]
        index = torch.arange(-b, n + e, device=x.device)
        if mode == "reflect":
            if max(b, e) >= n and (b or e):  # a reflection needs that many elements beside the edge
                raise ValueError("Pad: mode reflect needs an axis longer than its pads")
            period = max(2 * (n - 1), 1)
            index = index % period
            index = torch.where(index >= n, period - index, index)
        elif mode == "replicate":
            index = index.clamp(0, n - 1)
        else:
            index = index % n
        x = x.index_select(a, index)
    return x
'''


def _runtime_pad(ctx):
    mode = _PAD_MODES.get(ctx.attr("mode", "constant"))
    if mode is None:
        raise Unsupported(f"mode {ctx.attr('mode')!r}")
    fn = ctx.helper("pad", PAD)
    args = [ctx.x(0), ctx.x(1), ctx.x(3) if ctx.has_input(3) else "None", repr(mode)]
    if mode == "constant" and ctx.has_input(2):
        args.append(f"{ctx.x(2)}.item()")
    return f"{fn}({', '.join(args)})"


@register_op("Pad", since=1)
def pad(ctx):
    rank = ctx.rank(0)
    if ctx.opset < 11:
        pads, value = list(ctx.attr("pads" if ctx.opset >= 2 else "paddings")), float(ctx.attr("value", 0.0))
        axes = list(range(rank))
    elif ctx.const(1) is None:
        return _runtime_pad(ctx)
    else:
        pads = _ints(ctx.require_const(1, "pads"))
        value_c = ctx.const(2) if ctx.has_input(2) else None
        if ctx.has_input(2) and value_c is None:
            raise Unsupported("a non-constant pad value")
        value = value_c.reshape(-1)[0].item() if value_c is not None and value_c.size else 0
        if ctx.has_input(3):
            checks.axes_in_range(_ints(ctx.require_const(3, "axes")), rank)
        axes = [a % rank for a in _ints(ctx.require_const(3, "axes"))] if ctx.has_input(3) else list(range(rank))
    mode = _PAD_MODES.get(ctx.attr("mode", "constant"))
    if mode is None:
        raise Unsupported(f"mode {ctx.attr('mode')!r}")
    checks.pad_amounts(ctx, [int(p) for p in pads], axes, rank, ctx.attr("mode", "constant"))
    n = len(axes)
    begin = dict(zip(axes, pads[:n]))
    end = dict(zip(axes, pads[n:]))
    order = []
    for a in reversed(range(rank)):
        order += [begin.get(a, 0), end.get(a, 0)]
    while len(order) > 2 and order[-1] == 0 and order[-2] == 0:
        order = order[:-2]
    if mode != "constant":
        if not any(order):
            return ctx.x(0)
        # PyTorch pads the last 1-3 dimensions of a batched (or unbatched) tensor in these modes
        order += [0] * max(0, 2 * (rank - 2) - len(order))
        if rank < 2 or len(order) > 2 * min(rank - 1, 3):
            return f"{ctx.helper('pad', PAD)}({ctx.x(0)}, {ctx.lit(list(pads))}, {ctx.lit(list(axes))}, {mode!r})"
        return f"F.pad({ctx.x(0)}, {ctx.lit(tuple(order))}, mode={mode!r})"
    return f"F.pad({ctx.x(0)}, {ctx.lit(tuple(order))}, value={ctx.lit(value)})" if value else \
        f"F.pad({ctx.x(0)}, {ctx.lit(tuple(order))})"


CHANNEL_SHUFFLE = '''
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    # ShuffleNet: split the channels into groups and interleave them (group-major to channel-major order).
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)
'''


@register_op("ChannelShuffle", domain="zoo", since=1)
def channel_shuffle(ctx):
    """Internal: Reshape -> Transpose -> Reshape of a channel shuffle, fused by the passes."""
    return f"{ctx.helper('channel_shuffle', CHANNEL_SHUFFLE)}({ctx.x(0)}, {int(ctx.attr('groups'))})"
