"""Resize and Upsample.

Resize is F.interpolate where PyTorch computes exactly ONNX's coordinates and weights; every other mode
(nearest rounding, cubic coefficient, exclude_outside, antialias, crops, axes, aspect-ratio policies) goes
through a small helper that evaluates ONNX's definition with gathers, which stays differentiable.
"""
from __future__ import annotations

import numpy as np

from .. import checks
from ..errors import Unsupported
from ..registry import register_op

_SPATIAL = {3: "linear", 4: "bilinear", 5: "trilinear"}
# String attributes reach the generated source only through these tables.
_MODES = {"nearest": "nearest", "linear": "linear", "bilinear": "linear", "cubic": "cubic"}
_TRANSFORMS = {t: t for t in ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                              "asymmetric", "tf_crop_and_resize", "tf_half_pixel_for_nn")}
_ROUNDING = {r: r for r in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")}
_POLICIES = {p: p for p in ("stretch", "not_larger", "not_smaller")}

RESIZE = '''
def resize(x, sizes=None, scales=None, axes=None, roi=None, mode="nearest", transform="half_pixel",
           rounding="round_prefer_floor", cubic_a=-0.75, exclude_outside=False, antialias=False,
           extrapolation=0.0, policy="stretch"):
    # ONNX Resize, one axis at a time: each output index's source coordinate, then a weighted sum of its
    # neighbours (indices past the edge clamped, as ONNX pads by replication). Coordinates are float64 so
    # that nearest rounding ties fall as in ONNX's reference.
    as_list = lambda v: None if v is None else [float(e) for e in (v if isinstance(v, (list, tuple)) else v.tolist())]
    sizes, scales, roi = as_list(sizes), as_list(scales), as_list(roi)
    sizes, scales, roi = sizes or None, scales or None, roi or None
    axes = list(range(x.dim())) if axes is None else [a % x.dim() for a in axes]
    if not axes:  # the handler drops axes whose scale is 1: none left means the input as it is
        return x
    if sizes is not None:
        scales = [s / x.shape[a] for s, a in zip(sizes, axes)]
        if policy != "stretch":
            scales = [min(scales) if policy == "not_larger" else max(scales)] * len(axes)
            sizes = [int(s * x.shape[a] + 0.5) for s, a in zip(scales, axes)]
    else:
        sizes = [s * x.shape[a] for s, a in zip(scales, axes)]
    for i, dim in enumerate(axes):
        n, size, scale, length = x.shape[dim], int(sizes[i]), scales[i], scales[i] * x.shape[dim]
        start, end = (0.0, 1.0) if roi is None else (roi[i], roi[len(axes) + i])
        if abs(scale - 1) <= 1e-9 and size == n and (roi is None or abs(start) <= 1e-9 and abs(end - 1) <= 1e-9):
            continue
        y = torch.arange(size, dtype=torch.float64, device=x.device)
        if transform == "align_corners":
            src = y * (n - 1) / (length - 1) if length != 1 else y * 0
        elif transform == "asymmetric":
            src = y / scale
        elif transform == "tf_crop_and_resize":
            src = y * (end - start) * (n - 1) / (length - 1) if length != 1 else y * 0 + (end - start) * (n - 1) / 2
            src = src + start * (n - 1)
        elif transform == "pytorch_half_pixel" and length == 1:
            src = y * 0 - 0.5
        elif transform == "half_pixel_symmetric":
            src = n / 2 * (1 - size / length) + (y + 0.5) / scale - 0.5
        elif transform == "tf_half_pixel_for_nn":
            src = (y + 0.5) / scale
        else:
            src = (y + 0.5) / scale - 0.5
        base = torch.floor(src)
        frac = src - base
        if mode == "nearest":
            up = {"round_prefer_floor": frac > 0.5, "round_prefer_ceil": frac >= 0.5, "floor": frac < 0,
                  "ceil": frac > 0}[rounding]
            out = x.index_select(dim, (base.long() + up.long()).clamp(0, n - 1))
        else:
            support = 1 if mode == "linear" else 2
            stretch = min(scale, 1.0) if antialias else 1.0  # an antialiasing kernel widens as it shrinks
            first = int((-support / stretch) // 1) + 1
            offsets = torch.arange(first, 2 - first, dtype=torch.float64, device=x.device)
            d = ((offsets - frac[:, None]) * stretch).abs()
            if mode == "linear":
                w = (1 - d).clamp(min=0)
            else:
                a = cubic_a
                w = torch.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                                torch.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, d * 0))
            w = w / w.sum(1, keepdim=True)
            taps = base.long()[:, None] + offsets.long()
            if exclude_outside:
                w = torch.where((taps < 0) | (taps >= n), 0.0, w)
                w = w / w.sum(1, keepdim=True).clamp(min=1e-30)
            picked = x.index_select(dim, taps.clamp(0, n - 1).flatten()).unflatten(dim, tuple(taps.shape))
            shape = [1] * picked.dim()
            shape[dim], shape[dim + 1] = taps.shape
            out = (picked * w.to(x.dtype if x.is_floating_point() else w.dtype).reshape(shape)).sum(dim + 1).to(x.dtype)
        if transform == "tf_crop_and_resize":
            shape = [1] * x.dim()
            shape[dim] = size
            out = torch.where(((src < 0) | (src > n - 1)).reshape(shape), extrapolation, out)
        x = out
    return x
'''


def _options(ctx) -> dict:
    """The node's resize attributes, each string through its table."""
    def pick(table, name, default):
        value = ctx.attr(name, default)
        if value not in table:
            raise checks.Contradiction(f"attribute {name}={value!r} is not one of {sorted(table)}")
        return table[value]

    new = ctx.opset >= 11
    return {
        "mode": pick(_MODES, "mode", "nearest"),
        "transform": pick(_TRANSFORMS, "coordinate_transformation_mode", "half_pixel") if new else "asymmetric",
        "rounding": pick(_ROUNDING, "nearest_mode", "round_prefer_floor") if new else "floor",
        "cubic_a": float(ctx.attr("cubic_coeff_a", -0.75)),
        "exclude_outside": bool(ctx.attr("exclude_outside", 0)),
        "antialias": bool(ctx.attr("antialias", 0)) if ctx.opset >= 18 else False,
        "extrapolation": float(ctx.attr("extrapolation_value", 0.0)),
        "policy": pick(_POLICIES, "keep_aspect_ratio_policy", "stretch") if ctx.opset >= 18 else "stretch",
    }


def _torch_mode(o: dict, rank: int, scales, sizes, shape) -> tuple[str, bool | None] | None:
    """(F.interpolate mode, align_corners) when PyTorch computes exactly ONNX's result, else None.
    ``scales``/``sizes`` are the full-rank constants, or None when given at run time."""
    mode, transform = o["mode"], o["transform"]
    if o["antialias"] or o["exclude_outside"] or o["policy"] != "stretch":
        return None
    if mode == "nearest":
        if transform == "asymmetric" and o["rounding"] == "floor":
            return "nearest", None
        if transform in ("half_pixel", "pytorch_half_pixel") and o["rounding"] == "round_prefer_ceil":
            return "nearest-exact", None
        return None
    if transform == "align_corners":
        # ONNX divides by the unrounded output length (scale * size), PyTorch by the output size.
        statics = [d for d in (shape or ())]
        if sizes is None and (scales is None or not all(checks.is_int(d) and float(d * s).is_integer()
                                                        for d, s in zip(statics[2:], scales[2:]))):
            return None
    elif transform == "pytorch_half_pixel":
        if sizes is None or any(s == 1 for s in sizes[2:]):  # ONNX maps a single output to -0.5
            return None
    elif transform != "half_pixel":
        return None
    if mode == "cubic":
        if rank != 4 or abs(o["cubic_a"] + 0.75) > 1e-6:
            return None
        return "bicubic", transform == "align_corners"
    torch_mode = _SPATIAL.get(rank)
    return (torch_mode, transform == "align_corners") if torch_mode else None


def _interpolate(x: str, ctx, how: str, torch_mode: str, align: bool | None) -> str:
    extra = "" if align is None else f", align_corners={align}"
    return f"F.interpolate({x}, {how}, mode={torch_mode!r}{extra})"


def _helper_call(ctx, o: dict, sizes: str | None, scales: str | None, axes, roi: str | None) -> str:
    args = [ctx.x(0)]
    if sizes is not None:
        args.append(f"sizes={sizes}")
    if scales is not None:
        args.append(f"scales={scales}")
    if axes is not None:
        args.append(f"axes={ctx.lit(list(axes))}")
    if roi is not None and o["transform"] == "tf_crop_and_resize":
        args.append(f"roi={roi}")
    defaults = {"mode": "nearest", "transform": "half_pixel", "rounding": "round_prefer_floor", "cubic_a": -0.75,
                "exclude_outside": False, "antialias": False, "extrapolation": 0.0, "policy": "stretch"}
    relevant = {"rounding": o["mode"] == "nearest", "cubic_a": o["mode"] == "cubic",
                "extrapolation": o["transform"] == "tf_crop_and_resize"}
    for key, default in defaults.items():
        if o[key] != default and relevant.get(key, True):
            value = o[key]
            args.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={ctx.lit(value)}")
    return f"{ctx.helper('resize', RESIZE)}({', '.join(args)})"


def _floats(array) -> list[float]:
    return [float(v) for v in np.asarray(array).reshape(-1)]


@register_op("Resize", since=10)
def resize(ctx):
    rank = ctx.rank(0)
    o = _options(ctx)
    axes = checks.ints(ctx, "axes") if ctx.opset >= 18 else None
    if axes is not None:
        checks.axes_in_range(axes, rank)
        axes = [a % rank for a in axes]
    if ctx.opset < 11:
        roi_in, scales_in, sizes_in = None, 1, None
    else:
        roi_in, scales_in, sizes_in = 1, 2, 3
    present = {i for i in (roi_in, scales_in, sizes_in) if i is not None and ctx.has_input(i)}
    consts = {i: ctx.const(i) for i in present}
    empty = {i for i, c in consts.items() if c is not None and c.size == 0}
    present -= empty
    if scales_in not in present and sizes_in not in present:
        raise checks.Contradiction("neither scales nor sizes is given")
    if all(consts[i] is not None for i in present):
        return _static_resize(ctx, o, rank, axes, *(_floats(consts[i]) if i in present else None
                                                     for i in (roi_in, scales_in, sizes_in)))
    # Given at run time. F.interpolate's template assumes batch and channel unchanged.
    sizes = ctx.x(sizes_in) if sizes_in in present else None
    scales = ctx.x(scales_in) if sizes is None else None
    given = [] if sizes is not None else None  # sizes given, their values unknown
    choice = _torch_mode(o, rank, None, given, ctx.shape(0)) \
        if axes is None and o["transform"] != "pytorch_half_pixel" else None
    if choice is not None:
        how = f"size=tuple({sizes}[2:].tolist())" if sizes is not None else f"scale_factor=tuple({scales}[2:].tolist())"
        return _interpolate(ctx.x(0), ctx, how, *choice)
    roi = ctx.x(roi_in) if roi_in in present else None
    return _helper_call(ctx, o, sizes, scales, axes, roi)


def _static_resize(ctx, o, rank, axes, roi, scales, sizes):
    n = len(axes) if axes is not None else rank
    sizes = [int(s) for s in sizes] if sizes is not None else None
    if scales is not None and sizes is not None:
        raise checks.Contradiction("both scales and sizes are given; ONNX allows one")
    for name, values in (("scales", scales), ("sizes", sizes)):
        if values is not None and len(values) != n:
            raise checks.Contradiction(f"the {name} {values} have {len(values)} entries, but "
                                       f"{'the axes' if axes is not None else 'the input' + chr(39) + 's rank'} imply {n}")
    if roi is not None and o["transform"] == "tf_crop_and_resize" and len(roi) != 2 * n:
        raise checks.Contradiction(f"the roi {roi} has {len(roi)} entries; {n} resized axes imply {2 * n}")
    shape = ctx.shape(0)
    full_scales, full_sizes = _full_rank(ctx, o, rank, axes, scales, sizes, shape)
    checks.resize_amounts(ctx, full_scales, full_sizes, rank)
    choice = None
    if axes is None and (roi is None or o["transform"] != "tf_crop_and_resize"):
        choice = _torch_mode(o, rank, full_scales, full_sizes, shape)
    if choice is not None:
        if full_sizes is not None:
            same = shape is not None and all(checks.is_int(d) and d == s for d, s in zip(shape[:2], full_sizes[:2]))
            how = f"size={ctx.lit(tuple(full_sizes[2:]))}"
        else:
            same = all(abs(s - 1) <= 1e-9 for s in full_scales[:2])
            how = f"scale_factor={ctx.lit(tuple(full_scales[2:]))}"
        if same:
            return _interpolate(ctx.x(0), ctx, how, *choice)
    kept = [i for i in range(n) if not _identity(shape, axes[i] if axes else i, scales and scales[i], sizes and sizes[i],
                                                  roi and (roi[i], roi[n + i]) if o["transform"] == "tf_crop_and_resize" else None)]
    if o["policy"] != "stretch" or len(kept) == n:
        kept = list(range(n))
    which = [(axes[i] if axes else i) for i in kept]
    pick = lambda values: None if values is None else ctx.lit([values[i] for i in kept])  # noqa: E731
    crop = None if roi is None else ctx.lit([roi[i] for i in kept] + [roi[n + i] for i in kept])
    return _helper_call(ctx, o, pick(sizes), pick(scales), which if which != list(range(rank)) else None, crop)


def _identity(shape, axis, scale, size, crop) -> bool:
    """An axis ONNX leaves as it is (and so need not appear in the generated call)."""
    if crop is not None and (abs(crop[0]) > 1e-9 or abs(crop[1] - 1) > 1e-9):
        return False
    if size is not None:
        return shape is not None and shape[axis] == size
    return scale is not None and abs(scale - 1) <= 1e-9


def _full_rank(ctx, o, rank, axes, scales, sizes, shape):
    """Scales and sizes over every axis (what the checks and F.interpolate take); the aspect-ratio policies
    need the input's sizes on the resized axes."""
    axes = axes if axes is not None else list(range(rank))
    full_scales = full_sizes = None
    if scales is not None:
        full_scales = [1.0] * rank
        for a, s in zip(axes, scales):
            full_scales[a] = s
    if sizes is not None:
        dims = list(shape) if shape is not None else [None] * rank
        if o["policy"] != "stretch":
            if not all(checks.is_int(dims[a]) for a in axes):
                raise Unsupported("keep_aspect_ratio_policy with input sizes unknown before run time")
            ratios = [s / dims[a] for a, s in zip(axes, sizes)]
            scale = min(ratios) if o["policy"] == "not_larger" else max(ratios)
            sizes = [int(scale * dims[a] + 0.5) for a in axes]
        full_sizes = list(dims)
        for a, s in zip(axes, sizes):
            full_sizes[a] = s
        if not all(checks.is_int(d) for d in full_sizes):
            full_sizes = [d if checks.is_int(d) else 1 for d in full_sizes]  # unknown = unchanged, for the checks
    return full_scales, full_sizes


@register_op("Upsample", since=7)
def upsample(ctx):
    o = {"mode": _MODES.get(ctx.attr("mode", "nearest")), "transform": "asymmetric", "rounding": "floor",
         "cubic_a": -0.75, "exclude_outside": False, "antialias": False, "extrapolation": 0.0, "policy": "stretch"}
    if o["mode"] not in ("nearest", "linear"):
        raise checks.Contradiction(f"attribute mode={ctx.attr('mode')!r} is not 'nearest' or 'linear'")
    rank = ctx.rank(0)
    scales = ctx.attr("scales") if ctx.opset < 9 else ctx.const(1)
    if scales is None:
        if o["mode"] == "nearest":
            return _interpolate(ctx.x(0), ctx, f"scale_factor=tuple({ctx.x(1)}[2:].tolist())", "nearest", None)
        return _helper_call(ctx, o, None, ctx.x(1), None, None)
    scales = _floats(scales)
    checks.resize_amounts(ctx, scales, None, rank)
    choice = _torch_mode(o, rank, scales, None, ctx.shape(0))
    if choice is not None and all(abs(s - 1) <= 1e-9 for s in scales[:2]):
        return _interpolate(ctx.x(0), ctx, f"scale_factor={ctx.lit(tuple(scales[2:]))}", *choice)
    return _helper_call(ctx, o, None, ctx.lit(scales), None, None)
