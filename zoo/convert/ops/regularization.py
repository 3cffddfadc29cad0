"""Dropout: a real nn.Dropout layer, so the module trains the way the original did."""
from __future__ import annotations

import numpy as np

from ..errors import Unsupported
from ..registry import register_op


@register_op("Dropout", since=1)
def dropout(ctx):
    if ctx.opset >= 12:
        ratio = ctx.const(1) if ctx.has_input(1) else np.float32(0.5)
        training = ctx.const(2) if ctx.has_input(2) else np.bool_(False)
        if ratio is None and training is not None and not bool(training):
            # The rate comes at run time: functional dropout, active only when the module trains.
            mask = f"torch.ones_like({ctx.x(0)}, dtype=torch.bool)" if ctx.output_used(1) else None
            return [f"F.dropout({ctx.x(0)}, float({ctx.x(1)}), self.training)", mask]
        if ratio is None:
            raise Unsupported("a non-constant ratio")
        if training is None or bool(training):
            raise Unsupported("training_mode set in the graph")
        ratio = np.float32(ratio.reshape(()) if isinstance(ratio, np.ndarray) else ratio)
    else:
        ratio = np.float32(ctx.attr("ratio", 0.5))
    layer = ctx.layer(f"nn.Dropout(p={ctx.lit(ratio)})", hint="dropout")
    # In inference mode ONNX's mask is all ones.
    mask = f"torch.ones_like({ctx.x(0)}, dtype=torch.bool)" if ctx.output_used(1) else None
    return [f"{layer}({ctx.x(0)})", mask]
