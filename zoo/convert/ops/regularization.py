"""Dropout: a real nn.Dropout layer, so the module trains the way the original did."""
from __future__ import annotations

import numpy as np

from ..lower import Multi
from ..registry import register_op

DROPOUT = '''
def dropout(x, ratio, training):
    # ONNX Dropout with its mask: in training mode each element is dropped with probability ratio and the
    # rest scaled by 1 / (1 - ratio); otherwise the input as it is and a mask of ones.
    if not training:
        return x, torch.ones_like(x, dtype=torch.bool)
    keep = torch.rand_like(x, dtype=torch.float32) >= ratio
    return torch.where(keep, x / (1 - ratio), 0).to(x.dtype), keep
'''


def _training(ctx, ratio, training):
    """Training mode in the graph (a constant true or a run-time input): dropout as the graph asks for it,
    whatever mode the module is in."""
    p = f"float({ctx.x(1)})" if ratio is None else ctx.lit(float(np.float32(np.reshape(ratio, ()))))
    active = "True" if training is not None else f"bool({ctx.x(2)})"
    if ctx.output_used(1):
        return Multi(f"{ctx.helper('dropout', DROPOUT)}({ctx.x(0)}, {p}, {active})")
    return [f"F.dropout({ctx.x(0)}, {p}, {active})", None]


@register_op("Dropout", since=1)
def dropout(ctx):
    if ctx.opset >= 12:
        ratio = ctx.const(1) if ctx.has_input(1) else np.float32(0.5)
        training = ctx.const(2) if ctx.has_input(2) else np.bool_(False)
        if training is None or bool(training):
            return _training(ctx, ratio, training)
        if ratio is None:
            # The rate comes at run time: functional dropout, active only when the module trains.
            mask = f"torch.ones_like({ctx.x(0)}, dtype=torch.bool)" if ctx.output_used(1) else None
            return [f"F.dropout({ctx.x(0)}, float({ctx.x(1)}), self.training)", mask]
        ratio = np.float32(ratio.reshape(()) if isinstance(ratio, np.ndarray) else ratio)
    else:
        ratio = np.float32(ctx.attr("ratio", 0.5))
    layer = ctx.layer(f"nn.Dropout(p={ctx.lit(ratio)})", hint="dropout")
    # In inference mode ONNX's mask is all ones.
    mask = f"torch.ones_like({ctx.x(0)}, dtype=torch.bool)" if ctx.output_used(1) else None
    return [f"{layer}({ctx.x(0)})", mask]
