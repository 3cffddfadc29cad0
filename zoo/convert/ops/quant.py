"""QuantizeLinear, DequantizeLinear and the activation fake quantization that a Q -> DQ pair becomes.

Constant weights never get here: ``quantized.fold_dequantized_weights`` turns them into float weights first, so
a QDQ graph's Conv and Gemm become ordinary, fine-tunable layers.
"""
from __future__ import annotations

import numpy as np

from ..checks import Contradiction
from ..errors import Unsupported
from ..registry import register_op

RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767),
          "int32": (-2**31, 2**31 - 1)}
# Largest finite values: ONNX saturates float8 there (and Inf too), torch's cast would give NaN or Inf.
FLOAT8_MAX = {"float8_e4m3fn": 448.0, "float8_e5m2": 57344.0, "float8_e4m3fnuz": 240.0, "float8_e5m2fnuz": 57344.0}


def _axis(ctx) -> int:
    rank = ctx.rank(0)
    axis = int(ctx.attr("axis", 1))
    if not -rank <= axis < max(rank, 1):
        raise Contradiction(f"attribute axis={axis} is out of range for an input of rank {rank}")
    return axis % rank if rank else 0


def _along_axis(ctx, index: int) -> str:
    """Scale or zero point ``index`` shaped to broadcast against input 0: per tensor, per axis or blocked."""
    shape = ctx.shape(index)
    value = ctx.x(index)
    block = int(ctx.attr("block_size", 0) or 0)
    if block < 0:
        raise Contradiction(f"attribute block_size={block} must not be negative")
    if shape is None:
        raise Unsupported(f"input {index} has an unknown shape")
    if len(shape) == 0 or (len(shape) == 1 and shape[0] == 1 and not block):
        return value
    axis = _axis(ctx)
    if block:
        rank = ctx.rank(0)
        if len(shape) != rank:
            raise Contradiction(f"attribute block_size={block} needs input {index} of rank {rank}, not {tuple(shape)}")
        size = (ctx.shape(0) or [None] * rank)[axis]
        if isinstance(size, int) and isinstance(shape[axis], int) and -(-size // block) != shape[axis]:
            raise Contradiction(f"attribute block_size={block} splits axis {axis} of size {size} into "
                                f"{-(-size // block)} blocks, but input {index} has {shape[axis]}")
        length = size if isinstance(size, int) else f"{ctx.x(0)}.shape[{axis}]"
        return f"{value}.repeat_interleave({block}, dim={axis}).narrow({axis}, 0, {length})"
    if len(shape) != 1:
        raise Contradiction(f"input {index} has shape {tuple(shape)}; without block_size it must be a scalar or 1-D")
    rank = ctx.rank(0)
    return f"{value}.reshape({ctx.lit((-1,) + (1,) * (rank - 1 - axis))})"


def _quantized_type(ctx) -> np.dtype | None:
    out = ctx.out_dtype(0)
    if out is None and ctx.has_input(2):
        out = ctx.dtype(2)
    return np.dtype(np.uint8) if out is None and not ctx.has_input(2) else out


@register_op("QuantizeLinear", since=10)
def quantize_linear(ctx):
    out = _quantized_type(ctx)
    name = getattr(out, "name", str(out))
    x = f"{ctx.x(0)} / {_along_axis(ctx, 1)}"
    if name in FLOAT8_MAX:
        if ctx.has_input(2):
            x = f"{x} + {_along_axis(ctx, 2)}.to(torch.float32)"
        if int(ctx.attr("saturate", 1)):
            top = FLOAT8_MAX[name]
            x = f"torch.clamp({x}, {ctx.lit(-top)}, {ctx.lit(top)})"
        return f"({x}).to({ctx.torch_dtype(out)})"
    if name not in RANGES:
        raise Unsupported(f"quantizing to {name}")
    low, high = RANGES[name]
    q = f"torch.round({x})"
    if ctx.has_input(2):
        q += f" + {_along_axis(ctx, 2)}"
    return f"torch.clamp({q}, {low}, {high}).to({ctx.torch_dtype(out)})"


@register_op("DequantizeLinear", since=10)
def dequantize_linear(ctx):
    out = ctx.out_dtype(0)
    dtype = ctx.torch_dtype(out) if out is not None else "torch.float32"
    wide = "torch.int64" if ctx.dtype(0) is not None and ctx.dtype(0).kind in "iu" else "torch.float32"
    x = f"{ctx.x(0)}.to({wide})"
    if ctx.has_input(2):
        x = f"({x} - {_along_axis(ctx, 2)}.to({wide}))"
    return f"({x}.to(torch.float32) * {_along_axis(ctx, 1)}).to({dtype})"


@register_op("FakeQuantize", domain="zoo", since=1)
def fake_quantize(ctx):
    """Internal: a QuantizeLinear -> DequantizeLinear pair on an activation, fused by the passes.

    torch's fake quantization multiplies by 1/scale where ONNX divides by scale: the two round apart only
    when x / scale lands within an ulp of a half, which moves that element by one quantization step."""
    scale, zero = ctx.require_const(1, "the scale"), ctx.require_const(2, "the zero point")
    low, high = int(ctx.attr("quant_min")), int(ctx.attr("quant_max"))
    if scale.size == 1:
        return (f"torch.fake_quantize_per_tensor_affine({ctx.x(0)}, {ctx.lit(scale.reshape(())[()])}, "
                f"{int(zero.reshape(-1)[0])}, {low}, {high})")
    return (f"torch.fake_quantize_per_channel_affine({ctx.x(0)}, {ctx.x(1)}, {ctx.x(2)}.to(torch.int32), "
            f"{_axis(ctx)}, {low}, {high})")
