"""Attributes are input too: a node's attributes and constant inputs checked against its tensors before a
handler declares any layer, and the converter's memory budget.

A contradiction raises :class:`Contradiction`; the lowering turns it into a ``ConversionError`` that names
the file and the node, and the message names the attribute, its value and what the tensors imply. Checks
only refuse: on a valid graph every function returns exactly what the handler read before, so generated
code does not change.

The memory budget (``ZOO_CONVERT_MEMORY_BUDGET``, bytes with an optional K/M/G suffix; default 1 GiB) is
what the converter may allocate beyond the model's own weights: constant folding stops folding (and leaves
the expression to run time) before it would exceed it, and a layer whose output for one sample would be
larger than it is refused, since verifying the module, or using it, would need that memory.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Sequence

import numpy as np

from .errors import ConversionError, Unsupported

DEFAULT_BUDGET = 1 << 30
BUDGET_VARIABLE = "ZOO_CONVERT_MEMORY_BUDGET"


class Contradiction(Unsupported):
    """An attribute or constant input contradicts the node's tensors: a broken or hostile file."""


def memory_budget() -> int:
    """Bytes the converter may allocate beyond the model's own weights (``ZOO_CONVERT_MEMORY_BUDGET``)."""
    text = os.environ.get(BUDGET_VARIABLE, "").strip()
    if not text:
        return DEFAULT_BUDGET
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:I?B)?", text.upper())
    if not match:
        raise ConversionError(f"{BUDGET_VARIABLE}={text!r}: expected a number of bytes such as 1073741824, 512M or 2G")
    return int(match[1]) * 1024 ** " KMGT".index(match[2] or " ")


def human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def known(shape: Sequence | None) -> list[int] | None:
    """The shape as ints, or None when any dimension is unknown or symbolic."""
    if shape is None or not all(isinstance(d, (int, np.integer)) for d in shape):
        return None
    return [int(d) for d in shape]


def is_int(d: Any) -> bool:
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool)


def ints(ctx, name: str, *, length: int | None = None, minimum: int | None = None,
         default: Sequence[int] | None = None, implied: str = "") -> list[int] | None:
    """Attribute ``name`` as a list of ints (``default`` when absent or empty), its length and signs checked."""
    raw = ctx.attr(name)
    if raw is None or (isinstance(raw, (list, tuple)) and not len(raw)):
        return None if default is None else list(default)
    values = list(raw) if isinstance(raw, (list, tuple, np.ndarray)) else [raw]
    if not all(is_int(v) for v in values):
        raise Contradiction(f"attribute {name}={_show(values)} must hold integers")
    values = [int(v) for v in values]
    if length is not None and len(values) != length:
        raise Contradiction(f"attribute {name}={values} has {len(values)} entries, but {implied} implies {length}")
    if minimum is not None and any(v < minimum for v in values):
        raise Contradiction(f"attribute {name}={values}: every entry must be at least {minimum}")
    return values


def integer(ctx, name: str, default: int, *, minimum: int | None = None) -> int:
    raw = ctx.attr(name, default)
    if not is_int(raw):
        raise Contradiction(f"attribute {name}={_show(raw)} must be an integer")
    if minimum is not None and raw < minimum:
        raise Contradiction(f"attribute {name}={int(raw)} must be at least {minimum}")
    return int(raw)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def output_fits(shape: Sequence, what: str, itemsize: int = 4) -> None:
    """Refuse a node whose output for one sample (its known dimensions) would exceed the memory budget."""
    dims = [int(d) for d in shape if is_int(d)]
    if any(d < 0 for d in dims):
        raise Contradiction(f"{what} gives an output of shape {tuple(shape)}, with a negative dimension")
    size = math.prod(dims) * itemsize
    budget = memory_budget()
    if size > budget:
        raise Contradiction(f"{what} gives an output of shape {tuple(shape)} ({human(size)}), beyond the converter's "
                            f"memory budget of {human(budget)} ({BUDGET_VARIABLE})")


def _input_shape(ctx, rank: int, implied: str) -> tuple | None:
    shape = ctx.shape(0)
    if shape is not None and len(shape) != rank:
        raise Contradiction(f"the input has rank {len(shape)}, but {implied} implies rank {rank}")
    return shape


def pads_attr(ctx, n: int, implied: str, minimum: int | None = 0) -> None:
    """Explicit pads (read by auto_pads) must be 2 * n entries and not negative."""
    if ctx.attr("auto_pad", "NOTSET") in ("NOTSET", "", None):
        ints(ctx, "pads", length=2 * n, minimum=minimum, implied=implied)


def conv_attrs(ctx, weight_shape: Sequence | None, *, transpose: bool = False):
    """(n, kernel, strides, dilations, group) of a Conv or ConvTranspose, checked against its weight's shape
    and its input's."""
    weight_shape = tuple(weight_shape or ())
    n = len(weight_shape) - 2
    if n not in (1, 2, 3):
        raise Unsupported(f"{n}-d convolution")
    w = f"the weight's shape {weight_shape}"
    if ctx.op_type in ("Conv", "ConvTranspose"):  # integer convolutions mix types by design
        same_dtype(ctx, (0, 1, 2), "X, W and B")
    kernel_w = list(weight_shape[2:])
    kernel = ints(ctx, "kernel_shape", length=n, minimum=1, implied=w)
    if kernel is None:
        kernel = kernel_w
    elif known(kernel_w) is not None and kernel != known(kernel_w):
        raise Contradiction(f"attribute kernel_shape={kernel} contradicts {w}, which implies kernel_shape={known(kernel_w)}")
    strides = ints(ctx, "strides", length=n, minimum=1, default=[1] * n, implied=w)
    dilations = ints(ctx, "dilations", length=n, minimum=1, default=[1] * n, implied=w)
    group = integer(ctx, "group", 1, minimum=1)
    pads_attr(ctx, n, w)
    x = _input_shape(ctx, n + 2, w)
    channels = x[1] if x is not None and is_int(x[1]) else None
    if not transpose:
        out_ch, per_group = weight_shape[0], weight_shape[1]
        if is_int(out_ch) and out_ch % group:
            raise Contradiction(f"attribute group={group} does not divide the {out_ch} output channels of {w}")
        if channels is not None and is_int(per_group) and channels != per_group * group:
            raise Contradiction(f"attribute group={group} with {w} implies {per_group * group} input channels, "
                                f"but the input has {channels}")
    else:
        in_ch = weight_shape[0]
        if is_int(in_ch) and in_ch % group:
            raise Contradiction(f"attribute group={group} does not divide the {in_ch} input channels of {w}")
        if channels is not None and is_int(in_ch) and channels != in_ch:
            raise Contradiction(f"{w} implies {in_ch} input channels, but the input has {channels}")
        out_pad = ints(ctx, "output_padding", length=n, minimum=0, default=[0] * n, implied=w)
        if any(p >= max(s, d) for p, s, d in zip(out_pad, strides, dilations)):
            raise Contradiction(f"attribute output_padding={out_pad} must be smaller than the stride {strides} "
                                f"(or the dilation {dilations}) in each dimension")
    return n, kernel, strides, dilations, group


def conv_output(ctx, weight_shape: Sequence, kernel, strides, dilations, begins, ends, *,
                transpose: bool = False, out_pad: Sequence[int] | None = None) -> None:
    """The output for one sample must have positive spatial sizes and fit the memory budget."""
    x = ctx.shape(0)
    if x is None:
        return
    channels = weight_shape[1] * integer(ctx, "group", 1) if transpose else weight_shape[0]
    spatial = []
    for i, (size, k, s, d, b, e) in enumerate(zip(x[2:], kernel, strides, dilations, begins, ends)):
        if not is_int(size):
            spatial.append(size)
            continue
        extent = (k - 1) * d + 1
        if transpose:
            out = (size - 1) * s - b - e + extent + (out_pad[i] if out_pad else 0)
        else:
            if size + b + e < extent:
                raise Contradiction(f"the dilated kernel ({extent}, from kernel_shape {list(kernel)} and dilations "
                                    f"{list(dilations)}) is larger than the padded input ({size} + pads {b} + {e}) "
                                    f"in spatial dimension {i}")
            out = (size + b + e - extent) // s + 1
        if out < 1:
            raise Contradiction(f"the attributes give an output of size {out} in spatial dimension {i}")
        spatial.append(out)
    output_fits([channels, *spatial], ctx.op_type)


def pool_attrs(ctx, n: int):
    """(kernel, strides, dilations) of a pooling node over rank n + 2 input, checked."""
    implied = f"the input's rank {n + 2}"
    kernel = ints(ctx, "kernel_shape", length=n, minimum=1, implied=implied)
    if kernel is None:
        raise Contradiction("attribute kernel_shape is missing (the op requires it)")
    strides = ints(ctx, "strides", length=n, minimum=1, default=[1] * n, implied=implied)
    dilations = ints(ctx, "dilations", length=n, minimum=1, default=[1] * n, implied=implied)
    pads_attr(ctx, n, implied)
    return kernel, strides, dilations


def pool_window(ctx, kernel, strides, dilations, begins, ends) -> None:
    """Pads smaller than the window (as onnxruntime requires) and a window that fits the padded input."""
    for b, e, k, d in zip(begins, ends, kernel, dilations):
        if max(b, e) >= (k - 1) * d + 1:
            raise Contradiction(f"pads {list(begins) + list(ends)} must be smaller than the window "
                                f"(kernel_shape {list(kernel)}, dilations {list(dilations)})")
    x = ctx.shape(0)
    if x is None:
        return
    for i, (size, k, d, b, e) in enumerate(zip(x[2:], kernel, dilations, begins, ends)):
        if is_int(size) and size + b + e < (k - 1) * d + 1:
            raise Contradiction(f"attribute kernel_shape={list(kernel)} (dilations {list(dilations)}) is larger than "
                                f"the padded input ({size} + pads {b} + {e}) in spatial dimension {i}")


def same_dim(a: Any, b: Any, message: str) -> None:
    if is_int(a) and is_int(b) and a != b:
        raise Contradiction(message)


def broadcast_fits(shape: Sequence, target: Sequence, message: str, *, onto: bool = False) -> None:
    """``shape`` and ``target`` broadcast (right-aligned; unknown dimensions pass); with ``onto``, ``shape``
    broadcasts onto ``target`` without growing it."""
    if onto and len(shape) > len(target):
        raise Contradiction(message)
    for a, b in zip(reversed(tuple(shape)), reversed(tuple(target))):
        if is_int(a) and is_int(b) and a != b and a != 1 and (onto or b != 1):
            raise Contradiction(message)


def reshape_target(ctx, target: list[int], allow_zero: bool) -> None:
    """A constant Reshape target: one -1 at most, no other negatives, and the element count of the input."""
    x = ctx.shape(0)
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise Contradiction(f"the shape input {target} may hold one -1 and no other negative number")
    if allow_zero and 0 in target and -1 in target:
        raise Contradiction(f"the shape input {target} holds both 0 and -1 with allowzero=1")
    resolved: list[Any] = []
    for i, d in enumerate(target):
        if d == 0 and not allow_zero:
            if x is not None and i >= len(x):
                raise Contradiction(f"the shape input {target} copies dimension {i} (a 0), "
                                    f"but the input {tuple(x)} has rank {len(x)}")
            resolved.append(x[i] if x is not None else None)
        else:
            resolved.append(d)
    _reshape_count(target, x, resolved)
    if -1 not in resolved:
        output_fits([d for d in resolved if d is not None], "Reshape")


def _reshape_count(target: list[int], x: Sequence | None, resolved: list) -> None:
    if x is None or any(d is None for d in resolved):
        return
    # Dimensions copied from the input (0) cancel; what stays unknown on the input's side is a factor >= 1.
    unknown = [d for d in x if not is_int(d)]
    copied = [d for d in resolved if not is_int(d)]
    for d in copied:
        if d in unknown:
            unknown.remove(d)
        else:
            return
    total = math.prod(d for d in x if is_int(d))
    rest = math.prod(d for d in resolved if is_int(d) and d != -1)
    if -1 in resolved:
        bad = not unknown and (rest == 0 or total % rest) or (rest == 0 and total != 0)
    else:
        bad = rest != total if not unknown else (total == 0) != (rest == 0) or (total and rest % total)
    if bad:
        held = f"{total} elements" if not unknown else f"a multiple of {total} elements"
        raise Contradiction(f"the shape input {target} does not fit the input of shape {tuple(x)} ({held})")


def expand_target(ctx, target: list[int]) -> None:
    x = ctx.shape(0)
    if any(d < 0 for d in target):
        raise Contradiction(f"the shape input {target} holds a negative dimension")
    if x is None:
        return
    broadcast_fits(x, target, f"the shape input {target} does not broadcast with the input's shape {tuple(x)}")
    rank = max(len(x), len(target))
    a = [1] * (rank - len(x)) + list(x)
    b = [1] * (rank - len(target)) + list(target)
    out = [q if p == 1 else p if q == 1 or not is_int(q) else q for p, q in zip(a, b)]
    output_fits(out, "Expand")


def tile_repeats(ctx, repeats: list[int]) -> None:
    x = ctx.shape(0)
    if any(r < 0 for r in repeats):
        raise Contradiction(f"the repeats input {repeats} holds a negative count")
    if x is None:
        return
    if len(repeats) != len(x):
        raise Contradiction(f"the repeats input {repeats} has {len(repeats)} entries, "
                            f"but the input's rank {len(x)} implies {len(x)}")
    out = [d * r if is_int(d) else r for d, r in zip(x, repeats)]  # an unknown dimension counts as 1
    output_fits(out, "Tile")


def pad_amounts(ctx, pads: list[int], axes: list[int], rank: int, mode: str = "constant") -> None:
    if len(pads) != 2 * len(axes):
        raise Contradiction(f"the pads {pads} have {len(pads)} entries, but {len(axes)} padded axes imply {2 * len(axes)}")
    if mode != "constant" and any(p < 0 for p in pads):
        raise Unsupported(f"negative pads {pads} with mode {mode!r}")
    x = ctx.shape(0)
    if x is None:
        return
    out = list(x)
    for a, b, e in zip(axes, pads[:len(axes)], pads[len(axes):]):
        if is_int(out[a]):
            if mode == "reflect" and (b or e) and max(b, e) >= out[a]:
                raise Contradiction(f"the pads {pads} reflect axis {a} of the input {tuple(x)} by {max(b, e)}; "
                                    f"mode 'reflect' allows at most {out[a] - 1}")
            if mode == "edge" and (b or e) and out[a] < 1:
                raise Contradiction(f"the pads {pads} repeat the edge of the empty axis {a} of the input {tuple(x)}")
            out[a] = out[a] + b + e
            if out[a] < 0:
                raise Contradiction(f"the pads {pads} crop axis {a} of the input {tuple(x)} below zero")
    output_fits(out, "Pad")


def resize_amounts(ctx, scales: list[float] | None, sizes: list[int] | None, rank: int) -> None:
    x = ctx.shape(0)
    if scales is not None:
        if len(scales) != rank:
            raise Contradiction(f"the scales {scales} have {len(scales)} entries, but the input's rank implies {rank}")
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise Contradiction(f"the scales {scales} must be positive and finite")
        if x is not None:
            out = [math.floor(d * s) if is_int(d) else d for d, s in zip(x, scales)]
            if any(is_int(d) and d < 1 for d in out):
                raise Contradiction(f"the scales {scales} give the input {tuple(x)} an empty output {tuple(out)}")
            output_fits(out, ctx.op_type)
    if sizes is not None:
        if len(sizes) != rank:
            raise Contradiction(f"the sizes {sizes} have {len(sizes)} entries, but the input's rank implies {rank}")
        if any(s < 1 for s in sizes):
            raise Contradiction(f"the sizes {sizes} must be positive")
        output_fits(sizes, ctx.op_type)


def axes_in_range(axes: Sequence[int], rank: int, what: str = "axes") -> None:
    """Axes within [-rank, rank) and each named once."""
    bad = [a for a in axes if not -rank <= a < rank]
    if bad:
        raise Contradiction(f"the {what} {list(axes)} hold {bad[0]}, outside [-{rank}, {rank}) for the input's rank {rank}")
    if len({a % rank for a in axes}) != len(axes):
        raise Contradiction(f"the {what} {list(axes)} name an axis twice")


def same_dtype(ctx, inputs: Sequence[int], names: str) -> None:
    """The inputs that share one type parameter in the op's schema (e.g. X, W and B of Conv) agree."""
    seen = [(i, np.dtype(ctx.dtype(i))) for i in inputs if ctx.has_input(i) and ctx.dtype(i) is not None]
    if len({d for _, d in seen}) > 1:
        described = ", ".join(f"input {i} {d.name}" for i, d in seen)
        raise Contradiction(f"{names} must share one element type, but have {described}")
