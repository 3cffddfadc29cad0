"""Integer arithmetic of dynamically quantized graphs: DynamicQuantizeLinear and MatMulInteger."""
from __future__ import annotations

from ..lower import Multi
from ..registry import register_op

DYNAMIC_QUANTIZE = '''
def dynamic_quantize_linear(x):
    # ONNX DynamicQuantizeLinear: uint8 over [min(x, 0), max(x, 0)], rounding half to even.
    hi, lo = torch.clamp(x.max(), min=0), torch.clamp(x.min(), max=0)
    scale = torch.where(hi == lo, torch.ones_like(hi), hi - lo) / 255
    zero = torch.round(torch.clamp(-lo / scale, 0, 255))
    y = torch.clamp(torch.round(x / scale) + zero, 0, 255)
    return y.to(torch.uint8), scale, zero.to(torch.uint8)
'''


@register_op("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(ctx):
    fn = ctx.helper("dynamic_quantize_linear", DYNAMIC_QUANTIZE)
    n = len(ctx.node.outputs)
    return Multi(f"{fn}({ctx.x(0)})[:{n}]") if n > 1 else f"{fn}({ctx.x(0)})[0]"


def _centred(ctx, i: int, zero: int, per_row: bool) -> str:
    """Input ``i`` as int64 minus its zero point (a per-row zero point of A lines up with A's rows)."""
    x = f"{ctx.x(i)}.to(torch.int64)"
    if not ctx.has_input(zero):
        return x
    z = f"{ctx.x(zero)}.to(torch.int64)"
    shape = ctx.shape(zero)
    if per_row and shape is not None and len(shape) == 1 and shape[0] != 1:
        z = f"{z}.unsqueeze(-1)"
    return f"({x} - {z})"


@register_op("MatMulInteger", since=10)
def matmul_integer(ctx):
    # int64 products are exact here; torch has no int32 matmul on every device
    return f"torch.matmul({_centred(ctx, 0, 2, True)}, {_centred(ctx, 1, 3, False)}).to(torch.int32)"
