"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss as F.nll_loss / F.cross_entropy."""
from __future__ import annotations

from ..errors import Unsupported
from ..registry import register_op


def _options(ctx, weight_index: int) -> str:
    reduction = ctx.attr("reduction", "mean")
    if reduction not in ("mean", "sum", "none"):
        raise Unsupported(f"reduction {reduction!r}")
    opts = f", reduction={reduction!r}"
    if ctx.has_input(weight_index):
        opts = f", weight={ctx.x(weight_index)}" + opts
    if ctx.attr("ignore_index") is not None:
        opts += f", ignore_index={int(ctx.attr('ignore_index'))}"
    return opts


@register_op("NegativeLogLikelihoodLoss", since=12)
def nll_loss(ctx):
    return f"F.nll_loss({ctx.x(0)}, {ctx.x(1)}.long(){_options(ctx, 2)})"


@register_op("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy(ctx):
    log_prob = f"torch.log_softmax({ctx.x(0)}, dim=1)"
    loss = f"F.nll_loss({log_prob}, {ctx.x(1)}.long(){_options(ctx, 2)})"
    return [loss, log_prob if ctx.output_used(1) else None]
