"""Gemm and MatMul: nn.Linear when the weight is a constant, torch.matmul otherwise."""
from __future__ import annotations

import numpy as np

from .. import checks
from ..registry import register_op


def _check_gemm(ctx, trans_a: int, trans_b: int) -> None:
    """Inner dimensions of A and B agree, and C broadcasts to the (M, N) result."""
    checks.same_dtype(ctx, (0, 1, 2), "A, B and C")
    a, b = ctx.shape(0), ctx.shape(1)
    for i, shape in ((0, a), (1, b)):
        if shape is not None and len(shape) != 2:
            raise checks.Contradiction(f"input {'AB'[i]} has shape {tuple(shape)}; Gemm needs a matrix")
    if a is None or b is None:
        return
    ka, kb = (a[0] if trans_a else a[1]), (b[1] if trans_b else b[0])
    checks.same_dim(ka, kb, f"inner dimensions differ: A {tuple(a)} with transA={trans_a} has {ka} columns, "
                            f"B {tuple(b)} with transB={trans_b} has {kb} rows")
    c = ctx.shape(2) if ctx.has_input(2) else None
    if c is not None:
        mn = ((a[1] if trans_a else a[0]), (b[0] if trans_b else b[1]))
        if len(c) > 2:
            raise checks.Contradiction(f"input C has shape {tuple(c)}; it must broadcast to the result {mn}")
        checks.broadcast_fits(c, mn, f"input C of shape {tuple(c)} does not broadcast to the result {mn}", onto=True)


def _check_matmul(ctx) -> None:
    checks.same_dtype(ctx, (0, 1), "A and B")
    a, b = ctx.shape(0), ctx.shape(1)
    if a is None or b is None or not len(a) or not len(b):
        return
    kb = b[0] if len(b) == 1 else b[-2]
    checks.same_dim(a[-1], kb, f"inner dimensions differ: A {tuple(a)} has {a[-1]} columns, "
                               f"B {tuple(b)} has {kb} rows")
    if len(a) > 2 and len(b) > 2:
        checks.broadcast_fits(a[:-2], b[:-2], f"the batch dimensions of A {tuple(a)} and B {tuple(b)} do not broadcast")


@register_op("Gemm", since=1)
def gemm(ctx):
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    _check_gemm(ctx, trans_a, trans_b)
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
    _check_matmul(ctx)
    b = ctx.const(1)
    if b is not None and b.ndim == 2 and b.dtype.kind == "f" and ctx.const(0) is None:
        layer = ctx.layer(f"nn.Linear({b.shape[0]}, {b.shape[1]}, bias=False)", weight=b.T)
        return f"{layer}({ctx.x(0)})"
    return f"torch.matmul({ctx.x(0)}, {ctx.x(1)})"


@register_op("Linear", domain="zoo", since=1)
def linear(ctx):
    """Internal: MatMul + Add of constants, fused by the passes."""
    weight, bias = ctx.require_const(1, "the weight"), ctx.require_const(2, "the bias")
    _check_matmul(ctx)
    layer = ctx.layer(f"nn.Linear({weight.shape[0]}, {weight.shape[1]})", weight=weight.T, bias=bias)
    return f"{layer}({ctx.x(0)})"
