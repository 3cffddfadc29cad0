"""onnxruntime's own sigmoid and tanh (MLAS's rational approximations, FMA kernels), bit for bit.

torch.sigmoid and torch.tanh are a few ulps from them. That is nothing in a float graph, but a quantized one
rounds activations to integers, and an activation an ulp from a rounding boundary then lands a whole
quantization step away, which the layers after it carry on. ``quantized.match_onnxruntime_rounding`` puts
these in place of Sigmoid and Tanh in quantized graphs only; float graphs keep torch's.
"""
from __future__ import annotations

from ..registry import register_op

# Each fused multiply-add is done in float64 and rounded once to float32: the product of two float32
# values is exact in float64, so this rounds as the hardware's FMA does (bar a double-rounding tie). The
# coefficients are MLAS's float32 constants, written out exactly.
ORT_SIGMOID = '''
def onnxruntime_sigmoid(x):
    # MLAS's logistic: p(v) / q(v) + 0.5 on v clamped to [-18, 18], Horner steps as fused multiply-adds.
    v = x.clamp(-18.0, 18.0)
    v2 = (v * v).to(torch.float64)
    p = torch.full_like(v2, 4.370310016654777e-11)
    for a in (1.156273228275495e-07, 6.085748827899806e-05, 0.008513770997524261, 0.24828794598579407):
        p = (p * v2 + a).to(torch.float32).to(torch.float64)
    q = torch.full_like(v2, 6.102473669618302e-13)
    for b in (5.761021437677982e-09, 6.291068075370276e-06, 0.0017019881634041667, 0.1168176531791687,
              0.9931519031524658):
        q = (q * v2 + b).to(torch.float32).to(torch.float64)
    return ((p.to(torch.float32) * v) / q.to(torch.float32) + 0.5).clamp(0.0, 1.0)
'''

ORT_TANH = '''
def onnxruntime_tanh(x):
    # MLAS's tanh: p(v) / q(v) on v clamped to [-9, 9], Horner steps as fused multiply-adds.
    v = x.clamp(-9.0, 9.0)
    v2 = (v * v).to(torch.float64)
    p = torch.full_like(v2, -2.7607683663038313e-16)
    for a in (2.0001879384549948e-13, -8.604671836165423e-11, 5.122297253024044e-08, 1.4857223504805006e-05,
              0.0006372619536705315, 0.004893524572253227):
        p = (p * v2 + a).to(torch.float32).to(torch.float64)
    q = torch.full_like(v2, 1.1982583600911312e-06)
    for b in (0.00011853470641653985, 0.0022684347350150347, 0.0048935250379145145):
        q = (q * v2 + b).to(torch.float32).to(torch.float64)
    return (p.to(torch.float32) * v) / q.to(torch.float32)
'''


@register_op("OnnxruntimeSigmoid", domain="zoo", since=1)
def onnxruntime_sigmoid(ctx):
    """Internal: a quantized graph's Sigmoid (quantized.match_onnxruntime_rounding)."""
    return f"{ctx.helper('onnxruntime_sigmoid', ORT_SIGMOID)}({ctx.x(0)})"


@register_op("OnnxruntimeTanh", domain="zoo", since=1)
def onnxruntime_tanh(ctx):
    """Internal: a quantized graph's Tanh (quantized.match_onnxruntime_rounding)."""
    return f"{ctx.helper('onnxruntime_tanh', ORT_TANH)}({ctx.x(0)})"
