"""``zoo.optimize``: the fastest inference path PyTorch itself offers, for users who do not want onnxruntime.

On CPU: BatchNorm folded and channels_last (``zoo.fuse``), then ``torch.compile`` with Inductor's freezing
(weights become constants, so convolutions are pre-packed for oneDNN and constant subgraphs folded), run
under ``torch.inference_mode``. On CUDA additionally half precision and CUDA graphs (``reduce-overhead``).
The model is compiled for the example input's shape, on the spot, so the first real call is fast; another
shape compiles once more when first seen.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .fuse import fuse

# The largest difference from the eager model, relative to the largest output magnitude, per compute dtype.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2}


class Optimized(nn.Module):
    """A compiled inference module: inputs in any layout and float dtype, outputs in the input's dtype."""

    def __init__(self, fused: nn.Module, compiled, dtype: torch.dtype):
        super().__init__()
        self.fused = fused  # owns the weights; the compiled graph reads them, so they are not registered twice
        object.__setattr__(self, "_compiled", compiled)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self._compiled(x.to(self.dtype).contiguous(memory_format=torch.channels_last))
        return out.to(x.dtype) if torch.is_tensor(out) else out


def optimize(model: nn.Module, example_input: torch.Tensor, *, half: bool | None = None,
             max_autotune: bool = False) -> Optimized:
    """A compiled copy of ``model`` for inference on ``example_input``'s device, compiled for its shape.

    ``half`` (default: on CUDA) computes in float16; CUDA also replays CUDA graphs. ``max_autotune`` has
    Inductor time alternative kernels while compiling (much longer compilation; pays mostly on GPU).
    Another input shape compiles once more when first seen. Outputs match ``model.eval()`` within
    ``TOLERANCE[dtype]`` of the largest output magnitude. A zoo model's ``pretrained_cfg`` is kept, so
    ``zoo.transforms`` and ``zoo.labels`` work on the result. Not for training: BatchNorm's running
    statistics are folded into the weights.
    """
    device = example_input.device
    cuda = device.type == "cuda"
    dtype = torch.float16 if (cuda if half is None else half) else torch.float32
    fused = fuse(model).to(device=device, dtype=dtype)
    # Freezing: the weights are constants of the compiled graph (pre-packed convolutions, folded constants).
    options = {"freezing": True, "triton.cudagraphs": cuda, "max_autotune": max_autotune}
    result = Optimized(fused, torch.compile(fused, options=options), dtype)
    for attr in ("pretrained_cfg", "num_classes"):
        if hasattr(fused, attr):
            setattr(result, attr, copy.deepcopy(getattr(fused, attr)))
    for _ in range(3 if cuda else 1):  # compile now, not at the first real call; CUDA graphs record on the third
        result(example_input)
    return result.eval()
