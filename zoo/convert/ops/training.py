"""Optimizer steps of the ai.onnx.preview.training domain: Adagrad, Adam, Momentum (standard and Nesterov).

Each node updates n tensors at once: inputs R (learning rate), T (step count), then n tensors of each kind
(X1..Xn, G1..Gn, ...); outputs every new X, then every new state of each kind. A module-level helper does
one step for all of them, written as the update rule reads.
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import Contradiction
from ..lower import Multi
from ..registry import register_op

DOMAIN = "ai.onnx.preview.training"


def number(ctx, name: str, default: float) -> np.float32:
    """A float attribute (float32 in ONNX, so it prints as 0.95, not 0.949999988079071)."""
    raw = ctx.attr(name, default)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise Contradiction(f"attribute {name}={raw!r:.40} must be a finite number")
    return np.float32(raw)


def groups(ctx, kinds: int) -> list[str]:
    """``kinds`` bracketed lists of the n tensors of each kind that follow R and T."""
    count = ctx.num_inputs - 2
    if count <= 0 or count % kinds or len(ctx.node.outputs) != count // kinds * (kinds - 1):
        raise Contradiction(f"{ctx.num_inputs} inputs and {len(ctx.node.outputs)} outputs do not make "
                            f"{kinds} groups of tensors after R and T")
    n = count // kinds
    return ["[" + ", ".join(ctx.x(2 + k * n + i) for i in range(n)) + "]" for k in range(kinds)]


ADAGRAD = '''
def adagrad(r, t, xs, gs, hs, norm_coefficient, epsilon, decay_factor):
    # ONNX Adagrad: the learning rate decays with the step count; returns the new xs, then the new hs.
    rate = r / (1 + t * decay_factor)
    new_xs, new_hs = [], []
    for x, g, h in zip(xs, gs, hs):
        g = norm_coefficient * x + g
        h = h + g * g
        new_xs.append(x - rate * g / (h.sqrt() + epsilon))
        new_hs.append(h)
    return (*new_xs, *new_hs)
'''


@register_op("Adagrad", domain=DOMAIN, since=1)
def adagrad(ctx):
    xs, gs, hs = groups(ctx, 3)
    fn = ctx.helper("adagrad", ADAGRAD)
    return Multi(f"{fn}({ctx.x(0)}, {ctx.x(1)}, {xs}, {gs}, {hs}, "
                 f"norm_coefficient={ctx.lit(number(ctx, 'norm_coefficient', 0.0))}, "
                 f"epsilon={ctx.lit(number(ctx, 'epsilon', 1e-6))}, "
                 f"decay_factor={ctx.lit(number(ctx, 'decay_factor', 0.0))})")


ADAM = '''
def adam(r, t, xs, gs, vs, hs, alpha, beta, epsilon, norm_coefficient, norm_coefficient_post):
    # ONNX Adam: bias correction from the second step on (t > 0); returns the new xs, vs, then hs.
    rate = torch.where(t > 0, r * torch.sqrt(1 - beta ** t) / (1 - alpha ** t), r)
    new_xs, new_vs, new_hs = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        g = norm_coefficient * x + g
        v = alpha * v + (1 - alpha) * g
        h = beta * h + (1 - beta) * g * g
        x = x - rate * v / (h.sqrt() + epsilon)
        new_xs.append((1 - norm_coefficient_post) * x)
        new_vs.append(v)
        new_hs.append(h)
    return (*new_xs, *new_vs, *new_hs)
'''


@register_op("Adam", domain=DOMAIN, since=1)
def adam(ctx):
    xs, gs, vs, hs = groups(ctx, 4)
    fn = ctx.helper("adam", ADAM)
    args = [f"{key}={ctx.lit(number(ctx, key, default))}" for key, default in
            (("alpha", 0.9), ("beta", 0.999), ("epsilon", 1e-6), ("norm_coefficient", 0.0),
             ("norm_coefficient_post", 0.0))]
    return Multi(f"{fn}({ctx.x(0)}, {ctx.x(1)}, {xs}, {gs}, {vs}, {hs}, {', '.join(args)})")


MOMENTUM = '''
def momentum(r, t, xs, gs, vs, alpha, beta, norm_coefficient, nesterov):
    # ONNX Momentum: the gradient's coefficient is 1 at the first step (t == 0), beta after;
    # returns the new xs, then the new vs.
    scale = torch.where(t > 0, beta, 1.0)
    new_xs, new_vs = [], []
    for x, g, v in zip(xs, gs, vs):
        g = norm_coefficient * x + g
        v = alpha * v + scale * g
        new_xs.append(x - r * (g + alpha * v) if nesterov else x - r * v)
        new_vs.append(v)
    return (*new_xs, *new_vs)
'''

MODES = {"standard": False, "nesterov": True}


@register_op("Momentum", domain=DOMAIN, since=1)
def momentum(ctx):
    xs, gs, vs = groups(ctx, 3)
    mode = ctx.attr("mode")
    if mode not in MODES:
        raise Contradiction(f"attribute mode={mode!r:.40} must be one of {', '.join(MODES)}")
    fn = ctx.helper("momentum", MOMENTUM)
    return Multi(f"{fn}({ctx.x(0)}, {ctx.x(1)}, {xs}, {gs}, {vs}, alpha={ctx.lit(number(ctx, 'alpha', 0.0))}, "
                 f"beta={ctx.lit(number(ctx, 'beta', 0.0))}, "
                 f"norm_coefficient={ctx.lit(number(ctx, 'norm_coefficient', 0.0))}, nesterov={MODES[mode]})")
