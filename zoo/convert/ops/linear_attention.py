"""The recurrent-state layers of linear-attention and state-space models (Gated DeltaNet, Mamba):
LinearAttention and CausalConvWithState, each a small helper function in the generated file."""
from __future__ import annotations

import numpy as np

from .. import checks
from ..lower import Multi
from ..registry import register_op

CAUSAL_CONV = '''
def causal_conv_with_state(x, weight, bias=None, past_state=None, silu=False):
    # ONNX CausalConvWithState: a depthwise Conv1d over (past_state, x), no look-ahead; the new state is
    # the last k - 1 steps of that concatenation.
    k = weight.shape[-1]
    if past_state is None:
        past_state = x.new_zeros(x.shape[0], x.shape[1], k - 1)
    padded = torch.cat([past_state, x], dim=2)
    y = F.conv1d(padded, weight, bias, groups=x.shape[1])
    if silu:
        y = F.silu(y.float()).to(y.dtype)
    return y, padded[:, :, padded.shape[2] - (k - 1):]
'''

_ACTIVATIONS = {"none": False, "silu": True, "swish": True}


def _outputs(ctx, call: str):
    if ctx.output_used(1):
        return Multi(call)
    return f"{call}[0]"


@register_op("CausalConvWithState", since=27)
def causal_conv_with_state(ctx):
    activation = ctx.attr("activation", "none")
    if activation not in _ACTIVATIONS:
        raise checks.Contradiction(f"attribute activation={activation!r} is not one of none, silu, swish")
    if ctx.rank(0) != 3 or ctx.rank(1) != 3:
        raise checks.Contradiction("input and weight must be rank 3: (batch, channels, length) and (channels, 1, k)")
    fn = ctx.helper("causal_conv_with_state", CAUSAL_CONV)
    args = [ctx.x(0), ctx.x(1), ctx.x(2) if ctx.has_input(2) else "None", ctx.x(3) if ctx.has_input(3) else "None"]
    while args[-1] == "None":
        args.pop()
    if _ACTIVATIONS[activation]:
        args.append("silu=True")
    return _outputs(ctx, f"{fn}({', '.join(args)})")


LINEAR_ATTENTION = '''
def linear_attention(q, k, v, past_state=None, decay=None, beta=None, *, q_heads, kv_heads, scale=0.0):
    # ONNX LinearAttention, token by token in float32 as the spec defines it. With decay (log-space,
    # per head or per key dimension) the state decays each step ('gated'); with beta the write is the
    # delta rule's correction of what the state already holds for the key ('delta').
    dtype = q.dtype
    q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2).float()
               for t, h in ((q, q_heads), (k, kv_heads), (v, kv_heads)))
    scale = scale or q.shape[-1] ** -0.5
    if decay is not None:
        decay = decay.unflatten(-1, (kv_heads, -1)).transpose(1, 2).float().exp().unsqueeze(-1)
    if beta is not None:
        beta = beta.unsqueeze(-1).transpose(1, 2).float()
    if past_state is None:
        state = q.new_zeros(q.shape[0], kv_heads, q.shape[-1], v.shape[-1])
    else:
        state = past_state.float()
    outputs = []
    for i in range(q.shape[2]):
        if decay is not None:
            state = state * decay[:, :, i]
        key, value = k[:, :, i], v[:, :, i]
        if beta is not None:
            value = beta[:, :, i] * (value - torch.einsum("bhdm,bhd->bhm", state, key))
        state = state + key.unsqueeze(-1) * value.unsqueeze(-2)
        shared = state.repeat_interleave(q_heads // kv_heads, dim=1)
        outputs.append(scale * torch.einsum("bhd,bhdm->bhm", q[:, :, i], shared))
    y = torch.stack(outputs, dim=2).transpose(1, 2).flatten(2).to(dtype)
    return y, state.to(dtype if past_state is None else past_state.dtype)
'''

# update_rule -> (needs decay, needs beta)
_RULES = {"linear": (False, False), "gated": (True, False), "delta": (False, True), "gated_delta": (True, True)}


@register_op("LinearAttention", since=27)
def linear_attention(ctx):
    rule = ctx.attr("update_rule", "gated_delta")
    if rule not in _RULES:
        raise checks.Contradiction(f"attribute update_rule={rule!r} is not one of {', '.join(_RULES)}")
    for i, name, needed in ((4, "decay", _RULES[rule][0]), (5, "beta", _RULES[rule][1])):
        if ctx.has_input(i) != needed:
            raise checks.Contradiction(f"attribute update_rule={rule!r} {'needs' if needed else 'forbids'} "
                                       f"the {name} input")
    q_heads, kv_heads = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    if q_heads is None or kv_heads is None or kv_heads <= 0 or q_heads <= 0 or q_heads % kv_heads:
        raise checks.Contradiction(f"attributes q_num_heads={q_heads}, kv_num_heads={kv_heads}: both are "
                                   f"required and q_num_heads must be a positive multiple of kv_num_heads")
    for i in range(3):
        if ctx.rank(i) != 3:
            raise checks.Contradiction(f"input {i} must be rank 3 (batch, steps, heads * size)")
    fn = ctx.helper("linear_attention", LINEAR_ATTENTION)
    args = [ctx.x(i) if ctx.has_input(i) else "None" for i in range(6)]
    while args[-1] == "None":
        args.pop()
    args += [f"q_heads={int(q_heads)}", f"kv_heads={int(kv_heads)}"]
    if ctx.attr("scale", 0.0):
        args.append(f"scale={ctx.lit(np.float32(ctx.attr('scale')))}")
    return _outputs(ctx, f"{fn}({', '.join(args)})")
