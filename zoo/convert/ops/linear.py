"""Gemm and MatMul: nn.Linear when the weight is a constant, torch.matmul otherwise."""
from __future__ import annotations

import numpy as np

from ..registry import register_op


@register_op("Gemm", since=1)
def gemm(ctx):
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    b = ctx.const(1)
    c = ctx.const(2) if ctx.has_input(2) else None
    x = f"{ctx.x(0)}.t()" if trans_a else ctx.x(0)
    if b is not None and b.ndim == 2 and (not ctx.has_input(2) or c is not None):
        weight = b if trans_b else b.T
        if alpha != 1.0:  # a copy of the weight only where it changes
            weight = weight * np.asarray(alpha, dtype=b.dtype)
        out_features, in_features = weight.shape
        if c is not None and c.size in (1, out_features) and c.ndim <= 2 and (c.ndim < 2 or c.shape[0] == 1):
            bias = np.broadcast_to(c.reshape(-1) * np.asarray(beta, dtype=c.dtype), (out_features,))
            layer = ctx.layer(f"nn.Linear({in_features}, {out_features})", weight=weight, bias=bias)
            return f"{layer}({x})"
        layer = ctx.layer(f"nn.Linear({in_features}, {out_features}, bias=False)", weight=weight)
        if c is None:
            return f"{layer}({x})"
        scaled = ctx.x(2) if beta == 1.0 else f"{ctx.lit(beta)} * {ctx.x(2)}"
        return f"{layer}({x}) + {scaled}"
    y = f"{ctx.x(1)}.t()" if trans_b else ctx.x(1)
    expr = f"{x} @ {y}" if alpha == 1.0 else f"{ctx.lit(alpha)} * ({x} @ {y})"
    if ctx.has_input(2):
        expr += f" + {ctx.x(2)}" if beta == 1.0 else f" + {ctx.lit(beta)} * {ctx.x(2)}"
    return expr


@register_op("MatMul", since=1)
def matmul(ctx):
    b = ctx.const(1)
    if b is not None and b.ndim == 2 and b.dtype.kind == "f" and ctx.const(0) is None:
        layer = ctx.layer(f"nn.Linear({b.shape[0]}, {b.shape[1]}, bias=False)", weight=b.T)
        return f"{layer}({ctx.x(0)})"
    return f"torch.matmul({ctx.x(0)}, {ctx.x(1)})"


@register_op("Linear", domain="zoo", since=1)
def linear(ctx):
    """Internal: MatMul + Add of constants, fused by the passes."""
    weight, bias = ctx.require_const(1, "the weight"), ctx.require_const(2, "the bias")
    layer = ctx.layer(f"nn.Linear({weight.shape[0]}, {weight.shape[1]})", weight=weight.T, bias=bias)
    return f"{layer}({ctx.x(0)})"
