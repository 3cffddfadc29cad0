"""onnxruntime's fused attention (com.microsoft Attention, MultiHeadAttention, QAttention) through
F.scaled_dot_product_attention.

onnxruntime masks by adding ``mask_filter_value`` (-10000 by default), not minus infinity, to the scores of
masked keys, whatever form the mask comes in (key lengths, start and end positions, a 0/1 mask per key or per
query and key), and the causal ("unidirectional") mask the same way; the additive mask here does the same, so a
fully masked row averages its values as onnxruntime's does instead of giving NaN.
"""
from __future__ import annotations

import numpy as np

from ..errors import Unsupported
from ..lower import Multi
from ..registry import register_op
from .attention import ROTARY
from .contrib_dynamic import INTEGER_MATMUL

ATTEND = '''
def attend(q, k, v, mask=None, attention_bias=None, past_key=None, past_value=None, *, heads, scale=None,
           causal=False, filter_value=-10000.0, stacked=False):
    # onnxruntime's multi-head attention on [batch, seq, hidden] projections (keys and values may already be
    # [batch, heads, seq, head]): past keys and values first, masks added to the scores as filter_value.
    # Returns the output and the present keys and values (stacked, as Attention's present, if asked).
    batch, steps = q.shape[0], q.shape[1]
    q = q.unflatten(-1, (heads, -1)).transpose(1, 2)
    k = k if k.dim() == 4 else k.unflatten(-1, (heads, -1)).transpose(1, 2)
    v = v if v.dim() == 4 else v.unflatten(-1, (heads, -1)).transpose(1, 2)
    if past_key is not None:
        k, v = torch.cat([past_key, k], dim=2), torch.cat([past_value, v], dim=2)
    total = k.shape[2]
    keys = torch.arange(total, device=q.device)
    keep = torch.ones(1, 1, 1, total, dtype=torch.bool, device=q.device)
    if mask is not None:
        if mask.dim() == 1 and mask.shape[0] == batch:  # valid keys per sequence
            keep = (keys < mask.reshape(-1, 1)).reshape(batch, 1, 1, total)
        elif mask.dim() == 1:  # end positions, then start positions
            end, start = mask[:batch].reshape(-1, 1), mask[batch:].reshape(-1, 1)
            keep = ((keys < end) & (keys >= start)).reshape(batch, 1, 1, total)
        elif mask.dim() == 2:  # 0/1 per key
            keep = (mask != 0).reshape(batch, 1, 1, total)
        else:  # 0/1 per query and key
            keep = (mask != 0).reshape(batch, 1, steps, total)
    additive = torch.where(keep, 0.0, filter_value).to(q.dtype)
    if causal:
        future = keys > torch.arange(steps, device=q.device).reshape(-1, 1) + (total - steps)
        additive = additive + torch.where(future, filter_value, 0.0).to(q.dtype)
    if attention_bias is not None:
        additive = additive + attention_bias
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=scale)
    y = y.transpose(1, 2).flatten(2)
    return (y, torch.stack([k, v])) if stacked else (y, k, v)
'''


def _options(ctx) -> list[str]:
    heads = ctx.attr("num_heads")
    if not heads:
        raise Unsupported("num_heads is missing")
    options = [f"heads={int(heads)}"]
    if ctx.attr("scale"):
        options.append(f"scale={ctx.lit(np.float32(ctx.attr('scale')))}")
    if ctx.attr("unidirectional", 0):
        options.append("causal=True")
    if ctx.attr("mask_filter_value") is not None:
        options.append(f"filter_value={ctx.lit(np.float32(ctx.attr('mask_filter_value')))}")
    if ctx.attr("do_rotary", 0):
        raise Unsupported("do_rotary=1")
    return options


def _mask(ctx, i: int) -> str:
    if not ctx.has_input(i):
        return "None"
    shape = ctx.shape(i)
    if shape is not None and len(shape) == 4:
        raise Unsupported("a 4-D (Megatron) mask")
    return ctx.x(i)


def _split_qkv(ctx, projected: str, weight: int) -> str:
    """The projection split into Q, K and V: by qkv_hidden_sizes, else in three equal parts."""
    sizes = ctx.attr("qkv_hidden_sizes")
    if not sizes:
        shape = ctx.shape(weight)
        if shape is None or not isinstance(shape[-1], int) or shape[-1] % 3:
            raise Unsupported("a weight whose width is not known to split in three")
        sizes = [shape[-1] // 3] * 3
    return f"{projected}.split({ctx.lit(tuple(int(s) for s in sizes))}, dim=-1)"


def _attention(ctx, projected: str, weight: int, mask: int, past: int, bias: int | None):
    fn = ctx.helper("attend", ATTEND)
    args = [f"*{_split_qkv(ctx, projected, weight)}", _mask(ctx, mask),
            ctx.x(bias) if bias is not None and ctx.has_input(bias) else "None"]
    if ctx.has_input(past):
        args += [f"{ctx.x(past)}[0]", f"{ctx.x(past)}[1]"]
    if ctx.output_used(1):  # present: past and new keys and values, stacked
        call = f"{fn}({', '.join(args + _options(ctx) + ['stacked=True'])})"
        return Multi(call if len(ctx.node.outputs) == 2 else f"{call}[:{len(ctx.node.outputs)}]")
    return f"{fn}({', '.join(args + _options(ctx))})[0]"


@register_op("Attention", domain="com.microsoft", since=1)
def attention(ctx):
    """input @ weights + bias gives Q, K and V; inputs mask_index, past, attention_bias."""
    if ctx.has_input(6):
        raise Unsupported("past_sequence_length (a shared past buffer)")
    weight, bias = ctx.const(1), ctx.const(2)
    if weight is not None and weight.ndim == 2 and (bias is not None or not ctx.has_input(2)):
        # the fused Q, K, V projection as the nn.Linear it was
        tensors = {"weight": weight.T} | ({"bias": bias} if bias is not None else {})
        extra = "" if bias is not None else ", bias=False"
        layer = ctx.layer(f"nn.Linear({weight.shape[0]}, {weight.shape[1]}{extra})", **tensors)
        return _attention(ctx, f"{layer}({ctx.x(0)})", 1, 3, 4, 5)
    projected = f"torch.matmul({ctx.x(0)}, {ctx.x(1)})"
    if ctx.has_input(2):
        projected = f"({projected} + {ctx.x(2)})"
    return _attention(ctx, projected, 1, 3, 4, 5)


@register_op("QAttention", domain="com.microsoft", since=1)
def qattention(ctx):
    """Attention with a quantized input (uint8, from DynamicQuantizeLinear) and weight: the projection is
    onnxruntime's integer GEMM, the attention float."""
    fn = ctx.helper("integer_matmul", INTEGER_MATMUL)
    a_zero = ctx.x(6) if ctx.has_input(6) else "torch.zeros(())"
    w_zero = f", b_zero={ctx.x(7)}" if ctx.has_input(7) else ""
    projected = f"{fn}({ctx.x(0)}, {ctx.x(3)}, {a_zero}, {ctx.x(1)}, {ctx.x(4)}{w_zero}, bias={ctx.x(2)})"
    return _attention(ctx, projected, 1, 5, 8, None)


@register_op("MultiHeadAttention", domain="com.microsoft", since=1)
def multi_head_attention(ctx):
    """Separate query, key and value (key and value [batch, seq, hidden] or [batch, heads, seq, head]), an
    optional bias over all three, key_padding_mask, attention_bias, past_key and past_value."""
    if not ctx.has_input(1) or not ctx.has_input(2):
        raise Unsupported("packed QKV or packed KV in the query input")
    if ctx.num_inputs > 8:
        raise Unsupported("past_sequence_length / cache_indirection")
    fn = ctx.helper("attend", ATTEND)
    q, k, v = ctx.x(0), ctx.x(1), ctx.x(2)
    if ctx.has_input(3):
        bias = ctx.x(3)
        q, k, v = (f"{t} + {part}" for t, part in zip((q, k, v), (f"{bias}.chunk(3)[{i}]" for i in range(3))))
    args = [q, k, v, _mask(ctx, 4), ctx.x(5) if ctx.has_input(5) else "None"]
    if ctx.has_input(6):
        args += [ctx.x(6), ctx.x(7)]
    call = f"{fn}({', '.join(args + _options(ctx))})"
    if ctx.output_used(1) or ctx.output_used(2):
        return Multi(f"{call}[:{len(ctx.node.outputs)}]")
    return f"{call}[0]"


@register_op("RotaryEmbedding", domain="com.microsoft", since=1)
def rotary_embedding(ctx):
    """onnxruntime's RotaryEmbedding: inputs (x, position_ids, cos_cache, sin_cache), where position_ids may also
    be one offset (positions offset, offset + 1, ...); the rotation itself is ONNX's (ops.attention)."""
    if ctx.attr("is_packed_batching", 0):
        raise Unsupported("is_packed_batching=1")
    if np.float32(ctx.attr("scale", 1.0)) != 1:
        raise Unsupported("a scale other than 1")
    fn = ctx.helper("rotary_embedding", ROTARY)
    positions, shape = ctx.x(1), ctx.shape(1)
    if shape is None:
        raise Unsupported("position_ids of unknown rank")
    if len(shape) <= 1:  # an offset
        steps = f"{ctx.x(0)}.shape[{2 if ctx.rank(0) == 4 else 1}]"
        positions = f"({positions}.reshape(1, 1) + torch.arange({steps}, device={positions}.device))"
    options = [f"interleaved={bool(ctx.attr('interleaved', 0))}"]
    if ctx.attr("num_heads"):
        options.append(f"num_heads={int(ctx.attr('num_heads'))}")
    if ctx.attr("rotary_embedding_dim"):
        options.append(f"rotary_dim={int(ctx.attr('rotary_embedding_dim'))}")
    return f"{fn}({', '.join([ctx.x(0), ctx.x(2), ctx.x(3), positions] + options)})"


GROUP_QUERY = '''
def group_query_attention(q, k, v, past_key=None, past_value=None, seqlens_k=None, *, heads, kv_heads, scale=None,
                          window=-1):
    # onnxruntime's GroupQueryAttention without rotary or packing: causal, keys past seqlens_k + 1 masked,
    # each key/value head shared by heads // kv_heads query heads; returns the output and the present cache.
    steps = q.shape[1]
    q = q.unflatten(-1, (heads, -1)).transpose(1, 2)
    k = k.unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    v = v.unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    if past_key is not None:
        k, v = torch.cat([past_key, k], dim=2), torch.cat([past_value, v], dim=2)
    total = k.shape[2]
    keys = torch.arange(total, device=q.device)
    queries = torch.arange(steps, device=q.device).reshape(-1, 1) + (total - steps)
    keep = keys <= queries
    if window > 0:
        keep = keep & (keys > queries - window)
    keep = keep.reshape(1, 1, steps, total)
    if seqlens_k is not None:
        keep = keep & (keys <= seqlens_k.reshape(-1, 1, 1, 1))
    share = heads // kv_heads
    y = F.scaled_dot_product_attention(q, k.repeat_interleave(share, dim=1), v.repeat_interleave(share, dim=1),
                                       attn_mask=keep, scale=scale)
    return y.transpose(1, 2).flatten(2), k, v
'''


@register_op("GroupQueryAttention", domain="com.microsoft", since=1)
def group_query_attention(ctx):
    """GroupQueryAttention: separate query, key and value, past_key/past_value, seqlens_k; rotary, packed QKV,
    softcap, smooth softmax, attention_bias and head_sink are refused."""
    if ctx.attr("do_rotary", 0) or not ctx.has_input(1) or ctx.attr("softcap", 0.0) or ctx.attr("smooth_softmax", 0):
        raise Unsupported("rotary, packed QKV, softcap or smooth_softmax")
    if any(ctx.has_input(i) for i in range(7, ctx.num_inputs)):
        raise Unsupported("cos/sin caches, position_ids, attention_bias or head_sink")
    fn = ctx.helper("group_query_attention", GROUP_QUERY)
    args = [ctx.x(0), ctx.x(1), ctx.x(2)]
    args += [ctx.x(i) if ctx.has_input(i) else "None" for i in (3, 4, 5)]
    args += [f"heads={int(ctx.attr('num_heads'))}", f"kv_heads={int(ctx.attr('kv_num_heads'))}"]
    if ctx.attr("scale"):
        args.append(f"scale={ctx.lit(np.float32(ctx.attr('scale')))}")
    if int(ctx.attr("local_window_size", -1)) > 0:
        args.append(f"window={int(ctx.attr('local_window_size'))}")
    call = f"{fn}({', '.join(args)})"
    if ctx.output_used(1) or ctx.output_used(2):
        return Multi(f"{call}[:{len(ctx.node.outputs)}]")
    return f"{call}[0]"
