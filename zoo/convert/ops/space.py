"""GridSample, SpaceToDepth and DepthToSpace."""
from __future__ import annotations

from ..errors import Unsupported
from ..registry import register_op


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
    mode = ctx.attr("mode", "DCR")
    if mode == "CRD":  # channel-major blocks: PyTorch's pixel_unshuffle
        return f"F.pixel_unshuffle({ctx.x(0)}, {b})"
    if mode != "DCR":
        raise Unsupported(f"mode {mode!r}")
    return f"{ctx.x(0)}.unflatten(3, (-1, {b})).unflatten(2, (-1, {b})).permute(0, 3, 5, 1, 2, 4).flatten(1, 3)"


@register_op("DepthToSpace", since=1)
def depth_to_space(ctx):
    b = int(ctx.attr("blocksize"))
    if ctx.attr("mode", "DCR") == "CRD":
        return f"F.pixel_shuffle({ctx.x(0)}, {b})"
    return f"{ctx.x(0)}.unflatten(1, ({b}, {b}, -1)).permute(0, 3, 4, 1, 5, 2).flatten(4, 5).flatten(2, 3)"
