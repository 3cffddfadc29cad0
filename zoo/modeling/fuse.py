"""An opt-in inference fast path: BatchNorm folded into the preceding convolution, channels_last memory."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse

from .backbone import generated_class
from .model import ZooModel


class _Traceable(nn.Module):
    """Runs the generated ``forward`` (without ZooModel's Python input checks, which FX cannot trace)."""

    def __init__(self, inner: nn.Module, forward):
        super().__init__()
        self.inner = inner
        self._forward = forward

    def forward(self, x):
        return self._forward(self.inner, x)


class ChannelsLast(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous(memory_format=torch.channels_last))


def fuse(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` for inference: every Conv -> BatchNorm pair folded into one Conv (torch.fx),
    weights in channels_last layout. Numerically equal to ``model.eval()`` up to float rounding; not
    meant for training. A zoo model's ``pretrained_cfg`` is kept, so ``zoo.transforms`` and ``zoo.labels``
    work on the result; ``forward_features`` and the classifier helpers are not (use the original)."""
    if model.training:
        raise ValueError("zoo.fuse folds BatchNorm's running statistics and is for inference: call model.eval() "
                         "first (and fine-tune the original, not the fused copy)")
    model = copy.deepcopy(model)
    if isinstance(model, ZooModel):
        traceable = _Traceable(model, generated_class(model).forward)
    else:
        traceable = model
    fused = fx_fuse(traceable, inplace=True)
    if channels_last:
        fused = ChannelsLast(fused.to(memory_format=torch.channels_last))
    if isinstance(model, ZooModel):
        fused.pretrained_cfg, fused.num_classes = copy.deepcopy(model.pretrained_cfg), model.num_classes
    return fused.eval()
