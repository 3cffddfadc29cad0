"""BatchNormalization, LRN, InstanceNormalization, LayerNormalization, GroupNormalization."""
from __future__ import annotations

import numpy as np

from .. import checks
from ..errors import Unsupported
from ..registry import register_op

_RANK_TO_DIMS = {2: 1, 3: 1, 4: 2, 5: 3}


def _eps(ctx, default=1e-5):
    return ctx.lit(np.float32(ctx.attr("epsilon", default)))


def _check_channel_vectors(ctx, names) -> None:
    """Per-channel parameters (inputs 1, 2, ...) are vectors as long as the input has channels."""
    x = ctx.shape(0)
    if x is not None and len(x) < 2:
        raise checks.Contradiction(f"the input has shape {tuple(x)}; {ctx.op_type} needs a channel dimension")
    channels = x[1] if x is not None and checks.is_int(x[1]) else None
    lengths = {}
    for i, name in enumerate(names, start=1):
        shape = ctx.shape(i) if ctx.has_input(i) else None
        if shape is None:
            continue
        if len(shape) != 1:
            raise checks.Contradiction(f"input {i} ({name}) has shape {tuple(shape)}; it must be a vector of "
                                       f"{channels if channels is not None else 'channel'} entries")
        lengths[name] = shape[0]
    expected = channels if channels is not None else next((n for n in lengths.values() if checks.is_int(n)), None)
    source = "the input's channel count" if channels is not None else f"input 1 ({names[0]})"
    for i, name in enumerate(names, start=1):
        if name in lengths:
            checks.same_dim(lengths[name], expected, f"input {i} ({name}) has {lengths[name]} entries, but {source} "
                                                     f"implies {expected}")


@register_op("BatchNormalization", since=1)
def batch_norm(ctx):
    if ctx.attr("training_mode", 0) or ctx.output_used(1) or ctx.output_used(2):
        return _batch_norm_training(ctx)
    if ctx.output_used(3) or ctx.output_used(4):
        raise Unsupported("the saved mean and variance outputs")
    if ctx.opset < 7 and not ctx.attr("spatial", 1):
        raise Unsupported("spatial=0")
    rank = ctx.rank(0)
    _check_channel_vectors(ctx, ("scale", "bias", "mean", "var"))
    consts = [ctx.const(i) for i in range(1, 5)]
    if rank in _RANK_TO_DIMS and all(c is not None and c.ndim == 1 for c in consts):
        scale, bias, mean, var = consts
        args = [str(scale.shape[0])]
        eps = float(np.float32(ctx.attr("epsilon", 1e-5)))
        if abs(eps - 1e-5) > 1e-12:
            args.append(f"eps={_eps(ctx)}")
        momentum = round(1.0 - float(np.float32(ctx.attr("momentum", 0.9))), 6)
        if momentum != 0.1:
            args.append(f"momentum={ctx.lit(momentum)}")
        layer = ctx.layer(f"nn.BatchNorm{_RANK_TO_DIMS[rank]}d({', '.join(args)})",
                          weight=scale, bias=bias, running_mean=mean, running_var=var)
        return f"{layer}({ctx.x(0)})"
    x, scale, bias, mean, var = (ctx.x(i) for i in range(5))
    return f"F.batch_norm({x}, {mean}, {var}, {scale}, {bias}, False, 0.0, {_eps(ctx)})"


def _batch_norm_training(ctx):
    """Normalized by the batch's statistics; the running statistics move towards them by 1 - momentum."""
    if ctx.output_used(3) or ctx.output_used(4) or ctx.opset < 14:
        raise Unsupported("training mode before opset 14 (saved mean and variance outputs)")
    rank = ctx.rank(0)
    _check_channel_vectors(ctx, ("scale", "bias", "mean", "var"))
    x, scale, bias, mean, var = (ctx.x(i) for i in range(5))
    m = ctx.lit(np.float32(ctx.attr("momentum", 0.9)))
    dims = ctx.lit(tuple(d for d in range(rank) if d != 1))
    y = f"F.batch_norm({x}, None, None, {scale}, {bias}, True, 0.0, {_eps(ctx)})"
    new_mean = f"{mean} * {m} + torch.mean({x}, dim={dims}) * (1 - {m})" if ctx.output_used(1) else None
    new_var = f"{var} * {m} + torch.var({x}, dim={dims}, unbiased=False) * (1 - {m})" if ctx.output_used(2) else None
    return [y, new_mean, new_var]


@register_op("LRN", since=1)
def lrn(ctx):
    size = checks.integer(ctx, "size", 1, minimum=1)
    args = [str(size)]
    for onnx_name, torch_name, default in (("alpha", "alpha", 1e-4), ("beta", "beta", 0.75), ("bias", "k", 1.0)):
        args.append(f"{torch_name}={ctx.lit(np.float32(ctx.attr(onnx_name, default)))}")
    layer = ctx.layer(f"nn.LocalResponseNorm({', '.join(args)})", hint="lrn")
    if size % 2:
        return f"{layer}({ctx.x(0)})"
    # For an even size ONNX's window leans towards later channels and PyTorch's towards earlier ones.
    return f"{layer}({ctx.x(0)}.flip(1)).flip(1)"


@register_op("InstanceNormalization", since=1)
def instance_norm(ctx):
    rank = ctx.rank(0)
    _check_channel_vectors(ctx, ("scale", "bias"))
    scale, bias = ctx.const(1), ctx.const(2)
    if rank in (3, 4, 5) and scale is not None and bias is not None:
        layer = ctx.layer(f"nn.InstanceNorm{rank - 2}d({scale.shape[0]}, eps={_eps(ctx)}, affine=True)",
                          weight=scale, bias=bias)
        return f"{layer}({ctx.x(0)})"
    return f"F.instance_norm({ctx.x(0)}, weight={ctx.x(1)}, bias={ctx.x(2)}, eps={_eps(ctx)})"


@register_op("LayerNormalization", since=17)
def layer_norm(ctx):
    rank = ctx.rank(0)
    if ctx.output_used(1) or ctx.output_used(2):
        return _layer_norm_with_statistics(ctx, rank)
    axis = int(ctx.attr("axis", -1)) % rank
    shape = ctx.shape(0)
    normalized = tuple(shape[axis:]) if shape is not None else ()
    if not normalized or not all(isinstance(d, int) for d in normalized):
        raise Unsupported("LayerNormalization over dimensions of unknown size")
    scale = ctx.const(1)
    bias = ctx.const(2) if ctx.has_input(2) else None
    if (scale is not None and scale.shape == normalized and (not ctx.has_input(2) or (bias is not None and bias.shape == normalized))):
        tensors = {"weight": scale}
        extra = ""
        if bias is not None:
            tensors["bias"] = bias
        else:
            extra = ", bias=False"
        dims = ctx.lit(normalized[0]) if len(normalized) == 1 else ctx.lit(normalized)
        layer = ctx.layer(f"nn.LayerNorm({dims}, eps={_eps(ctx)}{extra})", **tensors)
        return f"{layer}({ctx.x(0)})"
    normed = f"F.layer_norm({ctx.x(0)}, {ctx.lit(normalized)}, eps={_eps(ctx)})"
    normed = f"{normed} * {ctx.x(1)}"
    return f"{normed} + {ctx.x(2)}" if ctx.has_input(2) else normed


def _layer_norm_with_statistics(ctx, rank):
    axis = int(ctx.attr("axis", -1)) % rank
    dims = ctx.lit(tuple(range(axis, rank)))
    x = ctx.x(0)
    mean = f"torch.mean({x}, dim={dims}, keepdim=True)"
    inv_std = f"torch.rsqrt(torch.var({x}, dim={dims}, unbiased=False, keepdim=True) + {_eps(ctx)})"
    y = f"({x} - {mean}) * {inv_std} * {ctx.x(1)}" + (f" + {ctx.x(2)}" if ctx.has_input(2) else "")
    return [y, mean if ctx.output_used(1) else None, inv_std if ctx.output_used(2) else None]


@register_op("GroupNormalization", since=18)
def group_norm(ctx):
    groups = int(ctx.attr("num_groups"))
    shape = ctx.shape(0)
    channels = shape[1] if shape is not None else None
    scale, bias = ctx.const(1), ctx.const(2)
    if not isinstance(channels, int) or scale is None or bias is None:
        return _functional_group_norm(ctx, groups)
    if ctx.opset < 21 and scale.shape[0] == groups and groups != channels:
        scale, bias = np.repeat(scale, channels // groups), np.repeat(bias, channels // groups)
    layer = ctx.layer(f"nn.GroupNorm({groups}, {channels}, eps={_eps(ctx)})", weight=scale, bias=bias)
    return f"{layer}({ctx.x(0)})"


def _functional_group_norm(ctx, groups):
    if ctx.opset < 21:  # scale and bias per group; PyTorch takes them per channel
        if ctx.shape(1) is None or ctx.shape(1)[0] != groups:
            raise Unsupported("GroupNormalization before opset 21 with a scale of unknown length")
        scale, bias = (f"{ctx.x(i)}.repeat_interleave({ctx.x(0)}.shape[1] // {groups})" for i in (1, 2))
    else:
        scale, bias = ctx.x(1), ctx.x(2)
    return f"F.group_norm({ctx.x(0)}, {groups}, {scale}, {bias}, {_eps(ctx)})"


@register_op("RMSNormalization", since=23)
def rms_norm(ctx):
    rank = ctx.rank(0)
    axis = int(ctx.attr("axis", -1)) % rank
    dims = ctx.lit(tuple(range(axis, rank)))
    x = ctx.x(0)
    return f"{x} * torch.rsqrt(torch.mean({x} * {x}, dim={dims}, keepdim=True) + {_eps(ctx)}) * {ctx.x(1)}"


@register_op("LpNormalization", since=1)
def lp_normalization(ctx):
    p = int(ctx.attr("p", 2))
    a = int(ctx.attr("axis", -1))
    if p not in (1, 2):
        raise checks.Contradiction(f"attribute p={p} must be 1 or 2")
    x = ctx.x(0)
    # ONNX gives 0, not 0/0, for an all-zero vector; an eps of the smallest normal number changes no other
    # result but a subnormal norm
    return f"F.normalize({x}, {float(p)}, dim={a}, eps=torch.finfo({x}.dtype).tiny)"


@register_op("MeanVarianceNormalization", since=9)
def mean_variance_normalization(ctx):
    dims = ctx.lit(tuple(ctx.attr("axes") or (0, 2, 3)))
    x = ctx.x(0)
    centred = f"{x} - torch.mean({x}, dim={dims}, keepdim=True)"
    return f"({centred}) / (torch.sqrt(torch.mean(({centred}) ** 2, dim={dims}, keepdim=True)) + 1e-09)"
