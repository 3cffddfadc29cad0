"""Resize/Upsample via F.interpolate, GridSample, SpaceToDepth and DepthToSpace."""
from __future__ import annotations

import numpy as np

from .. import checks
from ..errors import Unsupported
from ..registry import register_op

_SPATIAL = {3: "linear", 4: "bilinear", 5: "trilinear"}


def _interpolate(ctx, scales, sizes, mode, transform, nearest_mode, cubic_a, exclude_outside):
    rank = ctx.rank(0)
    if mode == "nearest":
        if transform == "asymmetric" and nearest_mode == "floor":
            torch_mode, align = "nearest", None
        elif transform in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn") and \
                nearest_mode in ("round_prefer_ceil", "floor") and transform != "tf_half_pixel_for_nn":
            torch_mode, align = "nearest-exact", None
            if nearest_mode == "floor":
                raise Unsupported("nearest with half_pixel and floor rounding")
        else:
            raise Unsupported(f"nearest with {transform} / {nearest_mode}")
    elif mode in ("linear", "bilinear", "trilinear", "cubic", "bicubic"):
        if transform not in ("half_pixel", "align_corners", "pytorch_half_pixel"):
            raise Unsupported(f"{mode} with coordinate_transformation_mode {transform}")
        if mode in ("cubic", "bicubic"):
            if rank != 4 or abs(cubic_a + 0.75) > 1e-6 or exclude_outside:
                raise Unsupported("cubic other than PyTorch's bicubic (a=-0.75, no exclude_outside)")
            torch_mode = "bicubic"
        else:
            torch_mode = _SPATIAL.get(rank)
            if torch_mode is None:
                raise Unsupported(f"linear resize of rank {rank}")
        align = transform == "align_corners"
    else:
        raise Unsupported(f"mode {mode!r}")
    x = ctx.x(0)
    if sizes is not None:
        if list(sizes[:2]) != list(ctx.shape(0)[:2]):
            raise Unsupported("resizing the batch or channel dimension")
        how = f"size={ctx.lit(tuple(int(s) for s in sizes[2:]))}"
    else:
        if any(abs(s - 1) > 1e-9 for s in scales[:2]):
            raise Unsupported("scaling the batch or channel dimension")
        how = f"scale_factor={ctx.lit(tuple(float(s) for s in scales[2:]))}"
    extra = "" if align is None else f", align_corners={align}"
    return f"F.interpolate({x}, {how}, mode={torch_mode!r}{extra})"


def _antialiased(ctx, scales, sizes, mode, transform, cubic_a):
    """PyTorch's antialiased bilinear/bicubic (PIL's filters, bicubic with a=-0.5) for 4-d inputs."""
    if ctx.rank(0) != 4 or transform != "half_pixel" or mode not in ("linear", "cubic") or \
            (mode == "cubic" and abs(cubic_a + 0.5) > 1e-6):
        raise Unsupported("antialiasing other than PyTorch's bilinear/bicubic")
    expr = _interpolate(ctx, scales, sizes, mode, transform, "round_prefer_floor", -0.75, 0)
    return expr[:-1] + ", antialias=True)"


@register_op("Resize", since=10)
def resize(ctx):
    rank = ctx.rank(0)
    if ctx.opset >= 18 and (ctx.attr("axes") is not None
                            or ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch"):
        raise Unsupported("axes or keep_aspect_ratio_policy")
    if ctx.opset < 11:
        scales, sizes = ctx.require_const(1, "scales"), None
    else:
        scales = ctx.const(2) if ctx.has_input(2) else None
        sizes = ctx.const(3) if ctx.has_input(3) else None
        if (ctx.has_input(2) and scales is None) or (ctx.has_input(3) and sizes is None):
            return _runtime_resize(ctx)
        if scales is not None and scales.size == 0:
            scales = None
    if scales is not None:
        scales = [float(s) for s in scales.reshape(-1)]
        if len(scales) != rank:
            raise Unsupported("scales for some axes only")
    if sizes is not None:
        sizes = [int(s) for s in sizes.reshape(-1)]
    checks.resize_amounts(ctx, scales, sizes, rank)
    transform = ctx.attr("coordinate_transformation_mode", "half_pixel") if ctx.opset >= 11 else "asymmetric"
    if ctx.opset >= 18 and ctx.attr("antialias", 0):
        return _antialiased(ctx, scales, sizes, ctx.attr("mode", "nearest"), transform,
                            float(ctx.attr("cubic_coeff_a", -0.75)))
    return _interpolate(ctx, scales, sizes, ctx.attr("mode", "nearest"), transform,
                        ctx.attr("nearest_mode", "round_prefer_floor") if ctx.opset >= 11 else "floor",
                        float(ctx.attr("cubic_coeff_a", -0.75)), int(ctx.attr("exclude_outside", 0)))


def _runtime_resize(ctx):
    """Scales or sizes given at run time: the batch and channel entries are assumed to be 1 / unchanged."""
    template = _interpolate(ctx, [1.0] * ctx.rank(0), None, ctx.attr("mode", "nearest"),
                            ctx.attr("coordinate_transformation_mode", "half_pixel"),
                            ctx.attr("nearest_mode", "round_prefer_floor"), float(ctx.attr("cubic_coeff_a", -0.75)),
                            int(ctx.attr("exclude_outside", 0)))
    fixed = f"scale_factor={ctx.lit(tuple([1.0] * (ctx.rank(0) - 2)))}"
    if ctx.has_input(3) and ctx.const(3) is None:
        how = f"size=tuple({ctx.x(3)}[2:].tolist())"
    else:
        how = f"scale_factor=tuple({ctx.x(2)}[2:].tolist())"
    return template.replace(fixed, how)


@register_op("Upsample", since=7)
def upsample(ctx):
    scales = ctx.attr("scales") if ctx.opset < 9 else ctx.require_const(1, "scales")
    checks.resize_amounts(ctx, [float(s) for s in np.asarray(scales).reshape(-1)], None, ctx.rank(0))
    return _interpolate(ctx, [float(s) for s in np.asarray(scales).reshape(-1)], None, ctx.attr("mode", "nearest"),
                        "asymmetric", "floor", -0.75, 0)


@register_op("GridSample", since=16)
def grid_sample(ctx):
    mode = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
            "cubic": "bicubic"}.get(ctx.attr("mode", "bilinear" if ctx.opset < 20 else "linear"))
    padding = {"zeros": "zeros", "border": "border", "reflection": "reflection"}.get(ctx.attr("padding_mode", "zeros"))
    if mode is None or padding is None:
        raise Unsupported(f"mode {ctx.attr('mode')!r} / padding_mode {ctx.attr('padding_mode')!r}")
    align = bool(ctx.attr("align_corners", 0))
    return (f"F.grid_sample({ctx.x(0)}, {ctx.x(1)}, mode={mode!r}, padding_mode={padding!r}, "
            f"align_corners={align})")


@register_op("SpaceToDepth", since=1)
def space_to_depth(ctx):
    b = int(ctx.attr("blocksize"))
    return f"{ctx.x(0)}.unflatten(3, (-1, {b})).unflatten(2, (-1, {b})).permute(0, 3, 5, 1, 2, 4).flatten(1, 3)"


@register_op("DepthToSpace", since=1)
def depth_to_space(ctx):
    b = int(ctx.attr("blocksize"))
    if ctx.attr("mode", "DCR") == "CRD":
        return f"F.pixel_shuffle({ctx.x(0)}, {b})"
    return f"{ctx.x(0)}.unflatten(1, ({b}, {b}, -1)).permute(0, 3, 4, 1, 5, 2).flatten(4, 5).flatten(2, 3)"
