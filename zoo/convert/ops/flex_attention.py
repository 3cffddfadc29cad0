"""FlexAttention (ai.onnx.preview): attention whose scores and probabilities pass through the model's own
modifier subgraphs, which become module-level functions of ``self`` as If/Loop bodies do (ops/control.py)."""
from __future__ import annotations

import numpy as np

from .. import checks
from ..registry import register_op
from .control import _outer_names, emit_function, lower_nodes, subgraph

FLEX_ATTENTION = '''
def flex_attention(q, k, v, *, scale=None, score_mod=None, prob_mod=None, precision=None):
    # ONNX FlexAttention: scores in the input type, softmax (and the modifiers) in float32 unless the
    # input is float64 or a precision is given, probabilities @ values in that precision too.
    if q.shape[1] != k.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    root = torch.tensor(scale, dtype=torch.float32, device=q.device).sqrt().to(q.dtype)
    precision = precision or (torch.float64 if q.dtype == torch.float64 else torch.float32)
    scores = ((q * root) @ (k * root).transpose(-1, -2)).to(precision)
    if score_mod is not None:
        scores = score_mod(scores).to(precision)
    probs = torch.softmax(scores, dim=-1)
    if prob_mod is not None:
        probs = prob_mod(probs).to(precision)
    return (probs @ v.to(precision)).to(v.dtype)
'''

_PRECISIONS = {1: "torch.float32", 10: "torch.float16", 11: "torch.float64", 16: "torch.bfloat16"}


def _modifier(ctx, key: str) -> str:
    """``lambda x: <node>_<key>(self, x)`` for the subgraph attribute ``key``; values it reads from the
    outer graph are bound as defaults, when the lambda is made, since ``x`` may also name one of them."""
    sub = subgraph(ctx, ctx.attr(key), _outer_names(ctx))
    if len(sub.inputs) != 1 or len(sub.outputs) != 1:
        raise checks.Contradiction(f"attribute {key} must be a graph of one input and one output, "
                                   f"got {len(sub.inputs)} and {len(sub.outputs)}")
    name, free = emit_function(ctx, key, sub, lower_nodes(ctx, sub), sub.inputs)
    if not free:
        return f"lambda x: {name}(self, x)"
    outer = ", ".join(ctx._lowering.reference(v) for v in free)
    return f"lambda x, outer=({outer},): {name}(self, x, *outer)"


@register_op("FlexAttention", domain="ai.onnx.preview", since=1)
def flex_attention(ctx):
    for i in range(3):
        if ctx.rank(i) != 4:
            raise checks.Contradiction(f"input {i} must be rank 4 (batch, heads, sequence, size)")
    options = []
    if ctx.attr("scale") is not None:
        options.append(f"scale={ctx.lit(np.float32(ctx.attr('scale')))}")
    for key in ("score_mod", "prob_mod"):
        if ctx.attr(key) is not None:
            options.append(f"{key}={_modifier(ctx, key)}")
    precision = ctx.attr("softmax_precision")
    if precision is not None:
        if precision not in _PRECISIONS:
            raise checks.Contradiction(f"attribute softmax_precision={precision} is not float, float16, "
                                       f"bfloat16 or double")
        options.append(f"precision={_PRECISIONS[precision]}")
    fn = ctx.helper("flex_attention", FLEX_ATTENTION)
    return f"{fn}({', '.join([ctx.x(0), ctx.x(1), ctx.x(2)] + options)})"
