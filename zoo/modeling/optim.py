"""Optimizer parameter groups for fine-tuning: layer-wise learning-rate decay along the network's stages
(found from the graph, see :mod:`zoo.modeling.backbone`) and no weight decay on biases and normalization layers."""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from .backbone import _trace, stages

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """({parameter name: depth}, number of depths). Depth i < S holds the layers computed up to stage i's
    feature map (stage 0 includes the stem); depth S everything after the last stage (the head, classifier
    last of all). Parameters the graph never uses count as head."""
    found = stages(model)
    gm, qualname = _trace(model)
    boundaries = {s.node: i for i, s in enumerate(found)}
    depth_of: dict[str, int] = {}
    current = 0
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            depth_of.setdefault(node.target, current)
        if qualname.get(node) in boundaries:
            current = boundaries[qualname[node]] + 1
    head = len(found)
    ids = {}
    for name, _ in model.named_parameters():
        owner = name
        while owner and owner not in depth_of:
            owner = owner.rpartition(".")[0]
        ids[name] = depth_of.get(owner, head)
    classifier = model.classifier_name
    for name in ids:
        if name.startswith(classifier + "."):
            ids[name] = head + 1
    return ids, head + 2


def _no_decay(name: str, module: nn.Module, keys: Sequence[str]) -> bool:
    leaf = name.rpartition(".")[2]
    for key in keys:
        if key == "bias" and leaf == "bias":
            return True
        if key == "norm" and isinstance(module, NORMS):
            return True
        if key not in ("bias", "norm") and key in name:
            return True
    return False


def param_groups(model: nn.Module, lr: float, *, weight_decay: float, layer_decay: float | None = None,
                 no_weight_decay: Sequence[str] = ("bias", "norm")) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` (trainable parameters only; frozen ones are left out).

    layer_decay: the classifier trains at ``lr``, the layers before it at ``lr * layer_decay ** k`` where k
        counts depths from the classifier back (head layers, then stage by stage to the stem); None: all at lr.
    no_weight_decay: "bias" (biases), "norm" (normalization layers' parameters) or any other text found in a
        parameter's name: these get weight_decay 0.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if layer_decay is not None and (isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float))
                                    or not 0 < layer_decay <= 1):
        raise ValueError(f"layer_decay must be a number in (0, 1] or None, got {layer_decay!r}")
    ids, _ = layer_ids(model)
    present = sorted(set(ids.values()))  # depths without parameters (a pooling-only head) take no decay step
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = ids[name]
        decay = not _no_decay(name, model.get_submodule(name.rpartition(".")[0]), no_weight_decay)
        scale = 1.0 if layer_decay is None else layer_decay ** (len(present) - 1 - present.index(depth))
        group = groups.setdefault((depth, decay), {
            "params": [], "names": [], "depth": depth, "lr_scale": scale, "lr": lr * scale,
            "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(param)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def freeze_until(model: nn.Module, stage: int) -> list[str]:
    """Freeze every parameter up to and including stage ``stage`` (its feature map and all before it);
    return their names. Their batch-norm layers should stay in eval mode while training (finetune does)."""
    found = stages(model)
    n = len(found)
    if isinstance(stage, bool) or not isinstance(stage, int) or not -n <= stage < n:
        listing = ", ".join(f"{i}: {s.num_chs}ch/{s.reduction}" for i, s in enumerate(found))
        raise ValueError(f"freeze-until must be a stage index in 0..{n - 1} (or -{n}..-1), got {stage!r}; "
                         f"{model.pretrained_cfg['name']}'s stages (channels/reduction): {listing}")
    stage %= n
    ids, _ = layer_ids(model)
    frozen = [name for name, p in model.named_parameters() if ids[name] <= stage]
    for name, p in model.named_parameters():
        if ids[name] <= stage:
            p.requires_grad_(False)
    return frozen


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Normalization layers whose parameters are all frozen (to keep in eval mode while training)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and all(not p.requires_grad for p in m.parameters(recurse=False))]
