"""Zoo models as backbones: stages found from the traced graph, features_only models, forward_intermediates,
input-channel adaptation and head options.

A stage is found wherever the spatial resolution drops: its feature map is the last tensor at the old
resolution that every path from the input to the logits goes through (so a residual block's side branch or
an Inception branch is never picked), plus the final feature map before the global pooling. Everything is
derived from ``torch.fx`` traces, so it holds whatever the generated module tree looks like.
"""
from __future__ import annotations

import copy
import logging
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence, Tuple

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor

from ..registry import RegistryError, generated_class as generated_class_of, load_registry

log = logging.getLogger("zoo")

POOL_MODULES = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOL_FUNCTIONS = (F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.mean, torch.amax)
# Graph nodes that never hold a feature map worth returning (train-time noise).
SKIPPED_MODULES = (nn.Dropout, nn.Dropout2d)
SKIPPED_FUNCTIONS = (F.dropout, F.dropout2d, torch.dropout)


@dataclass(frozen=True)
class Stage:
    node: str  # the node's qualified name in the traced graph (torchvision's naming)
    num_chs: int
    reduction: int
    module: str  # the layer the tensor comes out of (hook_type "forward") or goes into ("forward_pre")
    hook_type: str | None
    size: tuple[int, int]  # the feature map's height and width at the model's native input size

    def as_dict(self, index: int) -> dict[str, Any]:
        return {"index": index, "num_chs": self.num_chs, "reduction": self.reduction, "module": self.module,
                "hook_type": self.hook_type, "node": self.node}


class FeatureInfo:
    """timm's feature_info: one dict per returned stage (``num_chs``, ``reduction``, ``module``, ``index``)."""

    def __init__(self, stages: Sequence[Stage], out_indices: Sequence[int]):
        self.out_indices = tuple(out_indices)
        self.info = [stages[i].as_dict(i) for i in self.out_indices]

    def channels(self) -> list[int]:
        return [d["num_chs"] for d in self.info]

    def reduction(self) -> list[int]:
        return [d["reduction"] for d in self.info]

    def module_name(self) -> list[str]:
        return [d["module"] for d in self.info]

    def get_dicts(self, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        return [d if keys is None else {k: d[k] for k in keys} for d in self.info]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)

    def __iter__(self):
        return iter(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


def generated_class(model: nn.Module) -> type[nn.Module]:
    """The generated class under a zoo model's ZooModel mixin (its forward traces; the mixin's input checks
    do not). The model class records it (``ZooModel.zoo_generated``)."""
    return getattr(type(model), "zoo_generated", type(model))


def traceable(model: nn.Module) -> nn.Module:
    """A view of ``model`` with the generated class's forward: it shares every submodule and parameter."""
    view = copy.copy(model)
    view.__class__ = generated_class(model)
    return view


def _trace(model: nn.Module) -> tuple[fx.GraphModule, dict[fx.Node, str]]:
    tracer = NodePathTracer()
    graph = tracer.trace(traceable(model))
    return fx.GraphModule(tracer.root, graph), tracer.node_to_qualname


def _spatial(node: fx.Node) -> tuple[int, int] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return (int(shape[2]), int(shape[3])) if shape is not None and len(shape) == 4 else None


def _main_path(graph: fx.Graph) -> list[fx.Node]:
    """Nodes every input-to-output path goes through (the graph's articulation chain), in order."""
    nodes = list(graph.nodes)
    source = next(n for n in nodes if n.op == "placeholder")
    sink = next(n for n in nodes if n.op == "output")
    reach = {source}
    for n in nodes:
        if any(a in reach for a in n.all_input_nodes):
            reach.add(n)
    live = {sink}
    for n in reversed(nodes):
        if any(u in live for u in n.users):
            live.add(n)
    order = [n for n in nodes if n in reach and n in live]
    position = {n: i for i, n in enumerate(order)}
    # n dominates the output iff every edge crossing the cut just after n starts at n.
    last_use = {n: max((position[u] for u in n.users if u in position), default=-1) for n in order}
    path, open_until = [], {}
    for i, n in enumerate(order):
        open_until[n] = last_use[n]
        open_until = {m: end for m, end in open_until.items() if end > i}
        if set(open_until) <= {n}:
            path.append(n)
    return path


def _is_skipped(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], SKIPPED_MODULES)
    return node.op == "call_function" and node.target in SKIPPED_FUNCTIONS


def _is_global_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A pooling whose window covers the whole feature map (or whose output is 1x1)."""
    pool = modules.get(node.target) if node.op == "call_module" else None
    if not (isinstance(pool, POOL_MODULES) or (node.op == "call_function" and node.target in POOL_FUNCTIONS)):
        return False
    out = _spatial(node)
    if out == (1, 1):
        return True
    src = _spatial(node.all_input_nodes[0]) if node.all_input_nodes else None
    kernel = getattr(pool, "kernel_size", None)
    if kernel is None or src is None:
        return False
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return kh >= src[0] and kw >= src[1]


def _hook_point(node: fx.Node, name: str, modules: dict[str, nn.Module]) -> tuple[str, str | None]:
    if node.op == "call_module":
        return node.target, "forward"
    for user in node.users:
        if user.op == "call_module" and user.args and user.args[0] is node:
            return user.target, "forward_pre"
    return name, None


def _reduction(native: int, size: int) -> int:
    return 2 ** round(math.log2(native / size))


@lru_cache(maxsize=None)
def _stages_of(cls: type[nn.Module], classifier: str, height: int, width: int) -> tuple[tuple[Stage, ...], str | None]:
    """(stages, the qualified name of the head's global pooling node or None)."""
    with torch.device("meta"):
        model = cls()
    gm, qualname = _trace(model)
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    ShapeProp(gm).propagate(torch.empty(1, channels, height, width, device="meta"))
    modules = dict(gm.named_modules())
    current = (height, width)
    at_current: fx.Node | None = None
    found: list[fx.Node] = []
    path = _main_path(gm.graph)
    pool = next((qualname[n] for n in path if _is_global_pool(n, modules)), None)
    for node in path:
        size = _spatial(node)
        if node.op == "placeholder" or size is None or _is_skipped(node, modules):
            continue
        if _is_global_pool(node, modules) or (node.op == "call_module" and
                                               (node.target == classifier or node.target.startswith(classifier + "."))):
            break  # the head starts (SqueezeNet's classifier is a convolution before its pooling)
        if size[0] < current[0] or size[1] < current[1]:
            if at_current is not None:
                found.append(at_current)
            current, at_current = size, node
        elif size == current:
            at_current = node
    if at_current is not None:
        found.append(at_current)
    stages = []
    for node in found:
        module, hook = _hook_point(node, qualname[node], modules)
        h, w = _spatial(node)
        stages.append(Stage(qualname[node], int(node.meta["tensor_meta"].shape[1]), _reduction(height, h), module,
                            hook, (h, w)))
    return tuple(stages), pool


def stages(model: nn.Module) -> tuple[Stage, ...]:
    """The model's stages, found once per architecture on the meta device (no real computation)."""
    size = model.pretrained_cfg.get("native_size") or model.pretrained_cfg["input_size"][1:]
    return _stages_of(generated_class(model), model.classifier_name, int(size[0]), int(size[1]))[0]


def global_pool_node(model: nn.Module) -> str | None:
    size = model.pretrained_cfg.get("native_size") or model.pretrained_cfg["input_size"][1:]
    return _stages_of(generated_class(model), model.classifier_name, int(size[0]), int(size[1]))[1]


def adaptive_pool_would_help(model: nn.Module) -> bool:
    """Whether ``global_pool: adaptive`` in the registry would let this model take other input sizes: its head
    pools the final map, and no backbone stage hangs on that pooling (GoogLeNet's Caffe pooling and
    Inception-v2's do; AlexNet, ZFNet and VGG-19 flatten the map into an ``nn.Linear`` instead)."""
    pool = global_pool_node(model)
    return pool is not None and list(model.feature_info)[-1]["module"] != pool


def _check_indices(model: nn.Module, indices: Sequence[int] | int | None, argument: str) -> tuple[int, ...]:
    found = stages(model)
    n = len(found)
    if indices is None:
        return tuple(range(n))
    if isinstance(indices, int) and not isinstance(indices, bool):
        indices = range(n - indices, n) if 0 < indices <= n else [indices]  # timm: an int takes the last N
    chosen = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            listing = ", ".join(f"{k}: {s.num_chs}ch/{s.reduction}" for k, s in enumerate(found))
            raise ValueError(f"{argument} must hold stage indices in 0..{n - 1} (or -{n}..-1); got {i!r}. "
                             f"{model.pretrained_cfg['name']}'s stages (channels/reduction): {listing}")
        chosen.append(i % n)
    if not chosen or sorted(set(chosen)) != chosen:
        raise ValueError(f"{argument} must be increasing stage indices without repeats, got {tuple(indices)!r}")
    return tuple(chosen)


def _extractor(model: nn.Module, nodes: Sequence[str], single: bool = False) -> fx.GraphModule:
    """A pruned copy of the model's graph returning the named nodes as a list; it shares the model's layers and
    holds only those the outputs need."""
    training = model.training
    gm = create_feature_extractor(traceable(model), return_nodes={n: str(i) for i, n in enumerate(nodes)})
    model.train(training)
    for graph in {id(g): g for g in (getattr(gm, "train_graph", gm.graph), getattr(gm, "eval_graph", gm.graph),
                                        gm.graph)}.values():
        out = next(n for n in graph.nodes if n.op == "output")
        values = [out.args[0][str(i)] for i in range(len(nodes))]
        out.args = (values[0] if single else values,)  # a list, in stage order (as timm's FeatureListNet)
    gm.recompile()
    return gm


def features_model(model: nn.Module, out_indices: Sequence[int] | int | None = None) -> fx.GraphModule:
    """``create_model(..., features_only=True)``: the model cut after its last requested stage; ``forward``
    returns one feature map per requested stage and ``feature_info`` describes them."""
    chosen = _check_indices(model, out_indices, "out_indices")
    found = stages(model)
    gm = _extractor(model, [found[i].node for i in chosen])
    gm.feature_info = FeatureInfo(found, chosen)
    gm.feature_info.num_stages = len(found)
    gm.pretrained_cfg = {**model.pretrained_cfg, "num_classes": 0, "labels": None, "accuracy": None}
    kept = {k: v for k, v in model.pretrained_cfg.get("model_args", {}).items()
            if k not in ("drop_rate", "global_pool")}  # head options: the head is gone
    gm.pretrained_cfg["model_args"] = {**kept, "features_only": True, "out_indices": list(chosen)}
    gm.num_classes = 0
    gm.train(model.training)
    return gm


def forward_intermediates(model: nn.Module, x: torch.Tensor, indices: Sequence[int] | int | None = None,
                          intermediates_only: bool = False):
    """timm's ``forward_intermediates``: (final feature map, [feature map of each requested stage]), computed by
    one pass that stops at the last stage needed."""
    chosen = _check_indices(model, indices, "indices")
    found = stages(model)
    nodes = [found[i].node for i in chosen]
    if not intermediates_only and found[-1].node not in nodes:
        nodes.append(found[-1].node)
    key = (tuple(nodes), tuple(map(id, model.modules())))
    cache = model.__dict__.setdefault("_zoo_extractors", {})
    if key not in cache:
        cache.clear()  # layers were replaced (or other stages asked for): trace again
        cache[key] = _extractor(model, nodes)
    gm = cache[key]
    gm.train(model.training)
    outs = gm(x)
    if intermediates_only:
        return outs
    return outs[-1], outs[:len(chosen)]


def first_convs(model: nn.Module) -> list[str]:
    """The convolutions that read the input image directly (through parameter-free operations only)."""
    gm, _ = _trace(model)
    modules = dict(gm.named_modules())
    frontier = [n for n in gm.graph.nodes if n.op == "placeholder"]
    seen, convs = set(frontier), []
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module":
                if not isinstance(modules[user.target], nn.Conv2d):
                    raise ValueError(f"in_chans: the input first reaches {user.target} "
                                     f"({type(modules[user.target]).__name__}), not a convolution")
                convs.append(user.target)
            else:
                frontier.append(user)
    return convs


def adapt_input_conv(model: nn.Module, in_chans: int) -> list[str]:
    """Give the first convolution(s) ``in_chans`` input channels, adapting their weights as timm does: summed
    over the colour channels for one channel, else repeated and rescaled by 3 / in_chans (so a grey image
    repeated over the channels keeps the activations of the 3-channel model)."""
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an integer >= 1, got {in_chans!r}")
    names = first_convs(model)
    for name in names:
        old = model.get_submodule(name)
        native = old.in_channels
        if in_chans == native:
            continue
        new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, groups=old.groups, bias=old.bias is not None,
                        padding_mode=old.padding_mode, device=old.weight.device, dtype=old.weight.dtype)
        if old.groups != 1:
            raise ValueError(f"in_chans: {name} is a grouped convolution; its input channels cannot be adapted")
        with torch.no_grad():
            w = old.weight
            if in_chans == 1:
                weight = w.sum(dim=1, keepdim=True)
            else:
                weight = w.repeat(1, math.ceil(in_chans / native), 1, 1)[:, :in_chans] * (native / in_chans)
            new.weight = nn.Parameter(weight.detach(), requires_grad=old.weight.requires_grad)
            if old.bias is not None:
                new.bias = old.bias
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    cfg = model.pretrained_cfg
    model.pretrained_cfg = {**cfg, "input_size": [in_chans, *cfg["input_size"][1:]],
                            "model_args": {**cfg.get("model_args", {}), "in_chans": in_chans}}
    return names


# ---- head options -------------------------------------------------------------------------------------------

POOL_TYPES = ("avg", "max", "avgmax", "")


class SelectAdaptivePool2d(nn.Module):
    """Global pooling to 1x1 by average, maximum or their mean (timm's names)."""

    def __init__(self, pool_type: str = "avg"):
        super().__init__()
        self.pool_type = pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "max":
            return F.adaptive_max_pool2d(x, 1)
        if self.pool_type == "avgmax":
            return 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1))
        return F.adaptive_avg_pool2d(x, 1)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"


def _drop_before(classifier: nn.Module, args: Tuple[torch.Tensor]) -> Tuple[torch.Tensor]:
    return (classifier.head_drop(args[0]),)  # typed for TorchScript: a classifier takes one tensor


def new_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh classifier like the model's own (Linear or 1x1 Conv), or Identity for ``num_classes=0``."""
    old = model.get_classifier()
    if not isinstance(old, (nn.Linear, nn.Conv2d)):  # removed before (num_classes=0): the architecture's own
        with torch.device("meta"):
            old = generated_class(model)().get_submodule(model.classifier_name)
    param = next(model.parameters())
    factory = {"device": param.device, "dtype": param.dtype}
    if num_classes == 0:
        return nn.Identity()
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size, stride=old.stride,
                         padding=old.padding, bias=old.bias is not None, **factory)
    raise TypeError(f"cannot reset a classifier of type {type(old).__name__}")


def _pooled_forward(model: nn.Module, pool_type: str) -> fx.GraphModule:
    """The model's graph with its global pooling replaced by ``model.head_pool`` (slices of the old pooled map,
    as GoogLeNet's Caffe padding fix-up, go with it)."""
    import operator

    model.head_pool = SelectAdaptivePool2d(pool_type)
    tracer = NodePathTracer()
    graph = tracer.trace(traceable(model))
    target = global_pool_node(model)
    pool = next(n for n, q in tracer.node_to_qualname.items() if q == target)
    with graph.inserting_after(pool):
        new = graph.call_module("head_pool", (pool.all_input_nodes[0],))
    pool.replace_all_uses_with(new)
    for user in list(new.users):
        if user.op == "call_function" and user.target is operator.getitem:
            user.replace_all_uses_with(new)
            graph.erase_node(user)
    graph.erase_node(pool)
    gm = fx.GraphModule(tracer.root, graph, "ZooPooledHead")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def set_head(model: nn.Module, global_pool: str | None = None, drop_rate: float | None = None) -> None:
    """Apply head options (recorded in ``pretrained_cfg["model_args"]``, so they survive reset_classifier and
    save/load): dropout before the classifier, and another global pooling."""
    name = model.pretrained_cfg["name"]
    if global_pool is not None and global_pool not in POOL_TYPES:
        raise ValueError(f"global_pool must be one of {', '.join(map(repr, POOL_TYPES))}, got {global_pool!r}")
    if drop_rate is not None and (isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float))
                                  or not 0 <= drop_rate < 1):
        raise ValueError(f"drop_rate must be a number in [0, 1), got {drop_rate!r}")
    if global_pool is not None and global_pool_node(model) is None:
        raise ValueError(f"global_pool: {name}'s head does not pool (its classifier layers read the flattened "
                         f"{'x'.join(map(str, stages(model)[-1].size))} map), so there is no pooling to choose")
    if global_pool == "" and model.num_classes != 0:
        raise ValueError("global_pool='' (no pooling) needs num_classes=0: the classifier reads pooled features")
    args = dict(model.pretrained_cfg.get("model_args", {}))
    if drop_rate is not None:
        args["drop_rate"] = float(drop_rate)
    if global_pool is not None:
        args["global_pool"] = global_pool
    classifier = model.get_classifier()
    for key, hook in list(classifier._forward_pre_hooks.items()):
        if hook is _drop_before:
            del classifier._forward_pre_hooks[key]
    classifier._modules.pop("head_drop", None)
    if args.get("drop_rate"):
        classifier.head_drop = nn.Dropout(args["drop_rate"])
        classifier.register_forward_pre_hook(_drop_before)
    model.__dict__.pop("_zoo_forward", None)
    pool_type = args.get("global_pool")
    if pool_type == "" and model.num_classes == 0:
        model.__dict__["_zoo_forward"] = _extractor(model, [stages(model)[-1].node], single=True)
    elif pool_type:
        model.__dict__["_zoo_forward"] = _pooled_forward(model, pool_type)
    model.pretrained_cfg = {**model.pretrained_cfg, "model_args": args}


# ---- create_model's options -----------------------------------------------------------------------------------

def restore(model: nn.Module, saved: dict[str, Any] | None) -> nn.Module:
    """Before loading saved weights: give the model the layers those weights were saved from."""
    saved = saved or {}
    if saved.get("in_chans"):
        adapt_input_conv(model, saved["in_chans"])  # leaves convolutions that have the channels already
    if saved.get("features_only"):
        model = features_model(model, saved.get("out_indices"))
    return model


def configure(model: nn.Module, saved: dict[str, Any] | None = None, *, features_only: bool = False,
              out_indices: Sequence[int] | None = None, in_chans: int | None = None, drop_rate: float | None = None,
              global_pool: str | None = None) -> nn.Module:
    """create_model's backbone options, after the weights are loaded (a pretrained first convolution is adapted
    to ``in_chans``; a saved model's head options come back)."""
    saved = saved or {}
    if not isinstance(features_only, bool):
        raise ValueError(f"features_only must be True or False, got {features_only!r}")
    if out_indices is not None and not (features_only or saved.get("features_only")):
        raise ValueError("out_indices is for features_only=True models")
    if in_chans is not None and in_chans != model.pretrained_cfg["input_size"][0]:
        adapt_input_conv(model, in_chans)
    if saved.get("features_only"):
        if (drop_rate, global_pool) != (None, None):
            raise ValueError("drop_rate and global_pool are head options; this features_only model has no head")
        n = model.feature_info.num_stages
        if out_indices is not None and [i % n for i in out_indices] != saved.get("out_indices"):
            raise ValueError(f"out_indices: these weights are a features_only model of stages "
                             f"{saved.get('out_indices')}, not {out_indices!r}")
        return model
    if features_only:
        if (drop_rate, global_pool) != (None, None):
            raise ValueError("drop_rate and global_pool are head options; features_only=True models have no head")
        return features_model(model, out_indices)
    drop_rate = saved.get("drop_rate") if drop_rate is None else drop_rate
    global_pool = saved.get("global_pool") if global_pool is None else global_pool
    if (drop_rate, global_pool) != (None, None):
        set_head(model, global_pool=global_pool, drop_rate=drop_rate)
    return model



def main(argv: list[str] | None = None) -> int:
    """``python -m zoo.modeling.backbone [NAME ...]``: each model's stages (channels, reduction, feature map at the
    native size, the layer it comes from)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m zoo.modeling.backbone",
                                     description="Print each zoo model's backbone stages: channels, reduction, "
                                                 "feature map size at the native input, and the layer it comes from.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="zoo models (default: all)")
    args = parser.parse_args(argv)
    registry = load_registry()
    for name, error in registry.errors.items():
        log.warning("registry entry %s is skipped: %s", name, error)
    for name in args.names or list(registry):
        try:
            entry = registry.entry(name)  # stages come from shapes only, on the meta device: no weights are made
            found = _stages_of(generated_class_of(name), entry.classifier, *entry.input_size[1:])[0]
        except RegistryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{name}:")
        for d, s in zip(FeatureInfo(found, range(len(found))), found):
            print(f"  {d['index']}: {d['num_chs']:5d} ch  reduction {d['reduction']:2d}  "
                  f"{s.size[0]}x{s.size[1]}  {d['hook_type'] or 'node'} {d['module']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
