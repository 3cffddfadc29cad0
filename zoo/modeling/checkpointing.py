"""Gradient checkpointing for any zoo model, whatever its generated code looks like.

The model's forward is traced with ``torch.fx`` and cut into about 2*sqrt(n) segments of n graph nodes (finer than sqrt(n): the early, high-resolution segments are the largest to recompute), each cut
at a node every input-to-output path goes through (a residual block's output, never its side branch), so a
segment takes one tensor in and gives one out. Training then keeps only the segment boundaries and recomputes
each segment's inside during backward (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").
BatchNorm running statistics are restored after a recomputation, so they are updated once per step, as
without checkpointing.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
from torch import fx, nn
from torch.fx.passes.split_module import split_module
from torch.utils.checkpoint import checkpoint

from .backbone import _main_path, traceable


@contextmanager
def _keep_running_stats(norms: list[nn.modules.batchnorm._NormBase]):
    saved = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


class Checkpointed(nn.Module):
    """One segment, run under ``torch.utils.checkpoint`` (non-reentrant, RNG state preserved)."""

    def __init__(self, segment: nn.Module):
        super().__init__()
        self.segment = segment
        self.norms = [m for m in segment.modules()
                      if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]

    def forward(self, *args):
        if not torch.is_grad_enabled():
            return self.segment(*args)
        return checkpoint(self.segment, *args, use_reentrant=False,
                          context_fn=lambda: (nullcontext(), _keep_running_stats(self.norms)))


def _cuts(graph: fx.Graph) -> list[fx.Node]:
    nodes = list(graph.nodes)
    path = [n for n in _main_path(graph) if n.op not in ("placeholder", "output")]
    wanted = max(1, round(2 * math.sqrt(len(nodes))))
    position = {n: i for i, n in enumerate(nodes)}
    step = len(nodes) / wanted
    cuts: list[fx.Node] = []
    for k in range(1, wanted):
        target = k * step  # the articulation node nearest to an even split
        best = min(path, key=lambda n: abs(position[n] - target), default=None)
        if best is not None and best not in cuts and (not cuts or position[best] > position[cuts[-1]]):
            cuts.append(best)
    return cuts


def checkpointed_forward(model: nn.Module) -> fx.GraphModule:
    """The model's current forward (its generated graph, or the rewritten head of ``global_pool``) as a graph of
    checkpointed segments. It shares every layer with ``model`` and holds no parameters of its own."""
    forward = model.__dict__.get("_zoo_forward") or traceable(model)
    gm = fx.GraphModule(forward, fx.Tracer().trace(forward))
    cuts = _cuts(gm.graph)
    segment, index = 0, {}
    for node in gm.graph.nodes:
        index[node] = segment
        if node in cuts:
            segment += 1
    split = split_module(gm, forward, lambda node: index[node], keep_original_order=True)
    for name, child in list(split.named_children()):
        if name.startswith("submod_"):
            setattr(split, name, Checkpointed(child))
    return split


__all__ = ["checkpointed_forward", "Checkpointed"]
