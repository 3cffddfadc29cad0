"""The com.microsoft ops onnxruntime's transformer optimizer fuses encoder graphs into: layer norms (plain, RMS,
with a skip connection, with the embeddings), GELUs (exact, tanh, sigmoid, with a bias), BiasAdd and
FusedMatMul. Each is the PyTorch expression of the maths the fused kernel computes."""
from __future__ import annotations

import numpy as np

from ..checks import Contradiction
from ..errors import Unsupported
from ..registry import register_op
from ._util import constant
from .linear import gemm
from .norm import layer_norm, rms_norm

register_op("LayerNormalization", domain="com.microsoft", since=1)(layer_norm)
register_op("LayerNormalization", since=1)(layer_norm)  # onnxruntime's, before opset 17 made it ONNX's
register_op("SimplifiedLayerNormalization", domain="com.microsoft", since=1)(rms_norm)
register_op("SimplifiedLayerNormalization", since=1)(rms_norm)  # onnxruntime defines it in ai.onnx too


def _eps(ctx, default: float) -> str:
    return ctx.lit(np.float32(ctx.attr("epsilon", default)))


def _hidden(ctx, gamma: int) -> int:
    """The normalized (last) dimension: gamma's length."""
    shape = ctx.shape(gamma)
    if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
        raise Unsupported(f"gamma (input {gamma}) of shape {shape}; a vector of known length is needed")
    return shape[0]


def _normalized(ctx, x: str, gamma: int, beta: int | None, simplified: bool) -> str:
    """LayerNorm (or RMS norm) of ``x`` over its last dimension: nn.LayerNorm when gamma and beta are
    constants, else the functional form."""
    hidden = _hidden(ctx, gamma)
    eps = _eps(ctx, 1e-12)
    scale = ctx.const(gamma)
    shift = ctx.const(beta) if beta is not None and ctx.has_input(beta) else None
    if scale is not None and scale.shape == (hidden,):
        if simplified:
            layer = ctx.layer(f"nn.RMSNorm({hidden}, eps={eps})", weight=scale)
            return f"{layer}({x})"
        if beta is None or not ctx.has_input(beta) or (shift is not None and shift.shape == (hidden,)):
            tensors = {"weight": scale} | ({"bias": shift} if shift is not None else {})
            extra = "" if shift is not None else ", bias=False"
            layer = ctx.layer(f"nn.LayerNorm({hidden}, eps={eps}{extra})", **tensors)
            return f"{layer}({x})"
    if simplified:
        return f"F.rms_norm({x}, ({hidden},), {ctx.x(gamma)}, eps={eps})"
    shift_expr = ctx.x(beta) if beta is not None and ctx.has_input(beta) else "None"
    return f"F.layer_norm({x}, ({hidden},), {ctx.x(gamma)}, {shift_expr}, eps={eps})"


def _skip_norm(simplified: bool):
    """SkipLayerNormalization / SkipSimplifiedLayerNormalization: norm(input + skip + bias); outputs
    (output, mean, inv_std_var, input + skip + bias). The statistics outputs are for training graphs only."""
    bias = 3 if simplified else 4

    def handler(ctx):
        if ctx.output_used(1) or ctx.output_used(2):
            raise Unsupported("the mean and inv_std_var outputs")
        total = f"{ctx.x(0)} + {ctx.x(1)}"
        if ctx.has_input(bias):
            total = f"{total} + {ctx.x(bias)}"
        normed = _normalized(ctx, total, 2, None if simplified else 3, simplified)
        return [normed, None, None, total if ctx.output_used(3) else None]

    return handler


register_op("SkipLayerNormalization", domain="com.microsoft", since=1)(_skip_norm(False))
register_op("SkipSimplifiedLayerNormalization", domain="com.microsoft", since=1)(_skip_norm(True))


@register_op("BiasGelu", domain="com.microsoft", since=1)
def bias_gelu(ctx):
    return f"F.gelu({ctx.x(0)} + {ctx.x(1)})"


@register_op("Gelu", domain="com.microsoft", since=1)
def gelu(ctx):
    return f"F.gelu({ctx.x(0)})"


@register_op("FastGelu", domain="com.microsoft", since=1)
def fast_gelu(ctx):
    x = f"{ctx.x(0)} + {ctx.x(1)}" if ctx.has_input(1) else ctx.x(0)
    return f"F.gelu({x}, approximate='tanh')"


@register_op("QuickGelu", domain="com.microsoft", since=1)
def quick_gelu(ctx):
    alpha = np.float32(ctx.attr("alpha", 1.702))
    x = ctx.x(0)
    return f"{x} * torch.sigmoid({x})" if alpha == 1 else f"{x} * torch.sigmoid({ctx.lit(alpha)} * {x})"


@register_op("BiasAdd", domain="com.microsoft", since=1)
def bias_add(ctx):
    return f"{ctx.x(0)} + {ctx.x(1)} + {ctx.x(2)}"


@register_op("FusedMatMul", domain="com.microsoft", since=1)
def fused_matmul(ctx):
    """alpha * op(A) @ op(B); transBatch moves the first batch axis behind the matrix rows before the
    transpose (onnxruntime's layout for attention scores)."""
    operands = []
    for i, side in ((0, "A"), (1, "B")):
        x = ctx.x(i)
        if ctx.attr(f"transBatch{side}", 0):
            rank = ctx.rank(i)
            if rank < 3:
                raise Contradiction(f"transBatch{side}=1 needs input {side} of rank 3 or more, not {rank}")
            x = f"{x}.permute({ctx.lit(tuple(range(1, rank - 1)) + (0, rank - 1))})"
        if ctx.attr(f"trans{side}", 0):
            x = f"{x}.transpose(-1, -2)"
        operands.append(x)
    alpha = np.float32(ctx.attr("alpha", 1.0))
    product = f"torch.matmul({operands[0]}, {operands[1]})"
    return product if alpha == 1 else f"{ctx.lit(alpha)} * {product}"


def _embeddings(ctx, tables: list[str | None], positions: int | None, mask: int | None) -> tuple[str, str | None]:
    """word + position (+ segment) lookups of BERT's embeddings, and mask_index: valid tokens per sequence."""
    ids = ctx.x(0)
    if positions is not None and ctx.has_input(positions):
        where = ctx.x(positions)
    else:
        where = f"torch.arange({ids}.shape[1], device={ids}.device).expand_as({ids})"
    total = f"F.embedding({ids}, {tables[0]}) + F.embedding({where}, {tables[1]})"
    if ctx.has_input(1) and tables[2] is not None:
        total = f"{total} + F.embedding({ctx.x(1)}, {tables[2]})"
    if not ctx.output_used(1):
        return total, None
    if mask is not None and ctx.has_input(mask) and int(ctx.attr("mask_index_type", 1)):
        return total, f"{ctx.x(mask)}.sum(dim=1).to(torch.int32)"
    return total, f"torch.zeros({ids}.shape[0], dtype=torch.int32, device={ids}.device)"


@register_op("EmbedLayerNormalization", domain="com.microsoft", since=1)
def embed_layer_norm(ctx):
    """BERT's embeddings, then LayerNorm; outputs (output, mask_index, embedding_sum)."""
    tables = [ctx.x(2), ctx.x(3), ctx.x(4) if ctx.has_input(4) else None]
    total, mask_index = _embeddings(ctx, tables, 8, 7)
    return [_normalized(ctx, total, 5, 6, False), mask_index, total if ctx.output_used(2) else None]


@register_op("QEmbedLayerNormalization", domain="com.microsoft", since=1)
def qembed_layer_norm(ctx):
    """EmbedLayerNormalization with uint8 tables, gamma and beta (each with its scale and zero point), as
    quantize_dynamic writes it: dequantized once here, as onnxruntime dequantizes them, (q - zero) * scale."""
    def dequantized(i: int) -> np.ndarray | None:
        if not ctx.has_input(i):
            return None
        q, scale, zero = (ctx.require_const(j, f"input {j}") for j in (i, i + 6, i + 11))
        return ((q.astype(np.int32) - zero.astype(np.int32)).astype(np.float32) * scale.astype(np.float32))

    arrays = [dequantized(i) for i in (2, 3, 4)]
    tables = [None if a is None else constant(ctx, key, a) for key, a in zip(("word", "position", "segment"), arrays)]
    total, mask_index = _embeddings(ctx, tables, None, 7)
    gamma, beta = dequantized(5), dequantized(6)
    layer = ctx.layer(f"nn.LayerNorm({gamma.shape[0]}, eps={_eps(ctx, 1e-12)})", weight=gamma, bias=beta)
    return [f"{layer}({total})", mask_index]


_FUSED_ACTIVATIONS = {"Relu": "torch.relu({x})", "Tanh": "torch.tanh({x})", "Sigmoid": "torch.sigmoid({x})",
                      "LeakyRelu": "F.leaky_relu({x}, {alpha})", "Elu": "F.elu({x}, {alpha})",
                      "HardSigmoid": "torch.clamp({alpha} * {x} + {beta}, 0.0, 1.0)"}
_ACTIVATION_DEFAULTS = {"LeakyRelu": (0.01, 0.0), "Elu": (1.0, 0.0), "HardSigmoid": (0.2, 0.5)}


@register_op("FusedGemm", domain="com.microsoft", since=1)
def fused_gemm(ctx):
    """Gemm followed by an activation (onnxruntime's Gemm + activation fusion)."""
    activation = ctx.attr("activation", "")
    gemm_expr = gemm(ctx)
    if not activation:
        return gemm_expr
    if activation not in _FUSED_ACTIVATIONS:
        raise Unsupported(f"activation {activation!r}")
    alpha, beta = _ACTIVATION_DEFAULTS.get(activation, (0.0, 0.0))
    alpha = np.float32(ctx.attr("activation_alpha", alpha))
    beta = np.float32(ctx.attr("activation_beta", beta))
    return _FUSED_ACTIVATIONS[activation].format(x=f"({gemm_expr})", alpha=ctx.lit(alpha), beta=ctx.lit(beta))
