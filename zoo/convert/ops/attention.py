"""ONNX Attention and RotaryEmbedding (opset 23+) through plain-PyTorch helper functions emitted into the generated file."""
from __future__ import annotations

import numpy as np

from ..lower import Multi
from ..registry import register_op
from .activation import LOW_PRECISION_SOFTMAX

ATTENTION = '''
def attention(q, k, v, mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *, scale=None,
              is_causal=False, q_heads=0, kv_heads=0, softcap=0.0, qk_mode=0, left_window=-1, right_window=-1):
    # Scaled dot-product attention as ONNX defines it: optional KV cache, mask, causal, softcap and GQA.
    three_d = q.dim() == 3
    if three_d:
        q = q.unflatten(-1, (q_heads, -1)).transpose(1, 2)
        k = k.unflatten(-1, (kv_heads, -1)).transpose(1, 2)
        v = v.unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    if past_key is not None:
        k = torch.cat([past_key, k], dim=2)
        v = torch.cat([past_value, v], dim=2)
    present_key, present_value = k, v
    q_len, kv_len = q.shape[2], k.shape[2]
    bias = torch.zeros(q_len, kv_len, dtype=q.dtype, device=q.device)
    if mask is not None:
        if mask.shape[-1] < kv_len:
            fill = False if mask.dtype == torch.bool else float("-inf")
            mask = F.pad(mask, (0, kv_len - mask.shape[-1]), value=fill)
        if mask.dtype == torch.bool:
            mask = torch.zeros_like(mask, dtype=q.dtype).masked_fill(~mask, float("-inf"))
        bias = bias + mask
    if past_key is None and nonpad_kv_seqlen is not None:
        offset = (nonpad_kv_seqlen.reshape(-1) - q_len).reshape(-1, 1, 1, 1)
    else:
        offset = past_key.shape[2] if past_key is not None else 0
    diff = torch.arange(q_len, device=q.device).reshape(-1, 1) + offset - torch.arange(kv_len, device=q.device)
    if is_causal:
        bias = bias.masked_fill(diff < 0, float("-inf"))
    if left_window >= 0:
        bias = bias.masked_fill(diff > left_window, float("-inf"))
    if right_window >= 0:
        bias = bias.masked_fill(-diff > right_window, float("-inf"))
    if nonpad_kv_seqlen is not None:
        padded = torch.arange(kv_len, device=q.device) >= nonpad_kv_seqlen.reshape(-1, 1, 1, 1)
        bias = bias.masked_fill(padded, float("-inf"))
    if q.shape[1] != k.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    root = torch.tensor((q.shape[-1] ** -0.5 if scale is None else scale) ** 0.5, dtype=q.dtype, device=q.device)
    qk = (q * root) @ (k.transpose(-1, -2) * root)
    if softcap > 0:
        qk = softcap * torch.tanh(qk / softcap)
    scores = qk + bias
    if qk_mode == 2:
        qk = scores
    if scores.dtype in (torch.float16, torch.bfloat16):
        weights = low_precision_softmax(scores)
    else:
        weights = torch.softmax(scores, dim=-1)
    weights = torch.where(torch.isneginf(bias.amax(-1, keepdim=True)), torch.zeros_like(weights), weights)
    if qk_mode == 3:
        qk = weights
    y = weights @ v
    if three_d:
        y = y.transpose(1, 2).flatten(2)
    return y, present_key, present_value, qk
'''


@register_op("Attention", since=23)
def attention(ctx):
    ctx.helper("low_precision_softmax", LOW_PRECISION_SOFTMAX)
    fn = ctx.helper("attention", ATTENTION)
    args = [ctx.x(0), ctx.x(1), ctx.x(2)]
    for i in (3, 4, 5, 6):
        args.append(ctx.x(i) if ctx.has_input(i) else "None")
    while args[-1] == "None":
        args.pop()
    options = []
    if ctx.attr("scale") is not None:
        options.append(f"scale={ctx.lit(np.float32(ctx.attr('scale')))}")
    if ctx.attr("is_causal", 0):
        options.append("is_causal=True")
    if ctx.rank(0) == 3:
        options += [f"q_heads={int(ctx.attr('q_num_heads'))}", f"kv_heads={int(ctx.attr('kv_num_heads'))}"]
    if ctx.attr("softcap", 0.0):
        options.append(f"softcap={ctx.lit(np.float32(ctx.attr('softcap')))}")
    for side in ("left", "right"):
        if ctx.attr(f"{side}_window_size", -1) != -1:
            options.append(f"{side}_window={int(ctx.attr(f'{side}_window_size'))}")
    if ctx.attr("qk_matmul_output_mode", 0):
        options.append(f"qk_mode={int(ctx.attr('qk_matmul_output_mode'))}")
    call = f"{fn}({', '.join(args + options)})"
    if any(ctx.output_used(i) for i in range(1, 4)):
        n = len(ctx.node.outputs)
        return Multi(call if n == 4 else f"{call}[:{n}]")
    return f"{call}[0]"


ROTARY = '''
def rotary_embedding(x, cos, sin, position_ids=None, *, interleaved=False, num_heads=0, rotary_dim=0):
    # ONNX RotaryEmbedding on (batch, heads, seq, head) or (batch, seq, heads * head) inputs.
    shape = x.shape
    x = x.transpose(1, 2) if x.dim() == 4 else x.unflatten(-1, (num_heads, -1))
    rotary_dim = rotary_dim or x.shape[-1]
    rotate, keep = x[..., :rotary_dim], x[..., rotary_dim:]
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    if interleaved:
        x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
    else:
        x1, x2 = rotate.chunk(2, dim=-1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    if interleaved:
        rotate = torch.stack([real, imag], dim=-1).reshape(rotate.shape)
    else:
        rotate = torch.cat([real, imag], dim=-1)
    out = torch.cat([rotate, keep], dim=-1)
    return out.reshape(shape) if len(shape) == 3 else out.transpose(1, 2)
'''


@register_op("RotaryEmbedding", since=23)
def rotary_embedding(ctx):
    fn = ctx.helper("rotary_embedding", ROTARY)
    args = [ctx.x(0), ctx.x(1), ctx.x(2)] + ([ctx.x(3)] if ctx.has_input(3) else [])
    options = [f"interleaved={bool(ctx.attr('interleaved', 0))}"]
    if ctx.attr("num_heads"):
        options.append(f"num_heads={int(ctx.attr('num_heads'))}")
    if ctx.attr("rotary_embedding_dim"):
        options.append(f"rotary_dim={int(ctx.attr('rotary_embedding_dim'))}")
    return f"{fn}({', '.join(args + options)})"
