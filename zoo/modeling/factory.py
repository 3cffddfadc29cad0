"""Model constructors derived from the registry: create_model, list_models and one function per entry."""
from __future__ import annotations

import copy
import fnmatch
import logging
import os
import sys
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch

from ..convert.naming import class_name
from ..registry import Entry, generated_class, load_registry
from ..weights.hfhub import hub_weights
from ..weights.pretrained import WeightsError, fit, pin_for, read_config, read_safetensors, resolve_pretrained
from .backbone import configure, restore
from .model import ZooModel, entry_config, resolved_entry

log = logging.getLogger("zoo")


def class_name_for(name: str) -> str:
    """The importable name of a zoo model's class in :mod:`zoo.modeling.architectures` (``Zoo`` + generated name)."""
    return f"Zoo{class_name(name)}"


@lru_cache(maxsize=None)
def _model_class(name: str, registry_file: str) -> type[ZooModel]:
    generated = generated_class(name)
    cls = type(class_name_for(name), (ZooModel, generated),
               {"__module__": "zoo.modeling.architectures", "__doc__": generated.__doc__, "zoo_name": name,
                "_zoo_source": sys.modules[generated.__module__]})
    cls.__qualname__ = cls.__name__
    return cls


def model_class(name: str) -> type[ZooModel]:
    """The class of a zoo model: its generated class with ZooModel mixed in, importable from
    ``zoo.modeling.architectures`` (so models pickle, ``torch.save`` whole and deep-copy)."""
    cls = _model_class(name, str(load_registry().path))
    # Block classes pickle by reference to zoo.models.<name>: that must be the module this class came from,
    # even after another registry's model of the same name was imported.
    sys.modules[cls._zoo_source.__name__] = cls._zoo_source
    return cls


# What a weights folder's config.json may say about the weights beside it.
DESCRIBED = ("num_classes", "labels", "preprocessing", "input_size", "standin", "accuracy", "finetune", "base",
             "model_args")
BACKBONE_OPTIONS = ("features_only", "out_indices", "in_chans", "drop_rate", "global_pool")


def list_models(filter: str | Sequence[str] = "", pretrained: bool = False,
                exclude_filters: str | Sequence[str] = ()) -> list[str]:
    """Names of the zoo's models, in registry order, as timm's ``list_models``.

    filter: shell-style pattern(s) such as ``"res*"``; a name is listed if it matches any ("" lists all).
    pretrained: only models whose weights can be obtained: a pinned Hub revision, or a pinned ONNX file with a
        URL to convert them from.
    exclude_filters: pattern(s) of names to leave out.
    """
    registry = load_registry()
    for name, error in registry.errors.items():
        log.warning("registry entry %s is skipped: %s", name, error)
    include = [filter] if isinstance(filter, str) or filter is None else list(filter)
    include = [p for p in include if p]
    exclude = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    return [n for n in registry
            if (not include or any(fnmatch.fnmatch(n, p) for p in include))
            and not any(fnmatch.fnmatch(n, p) for p in exclude)
            and (not pretrained or pin_for(n) is not None or bool(registry[n].source.urls))]


def _construct(cls: type[ZooModel], on_meta: bool) -> ZooModel:
    if not on_meta:
        return cls()
    with torch.device("meta"):  # weights are about to be replaced: skip their random initialization
        return cls()


def create_model(name: str, pretrained: bool | str | os.PathLike = False, num_classes: int | None = None,
                 **kwargs: Any) -> ZooModel:
    """Build a zoo model.

    name: a registry model, or ``"hf-hub:org/repo[@revision]"`` for weights someone pushed with
        :func:`zoo.push_to_hub`: their ``config.json`` names the registry architecture (no code is imported)
        and their weights are always loaded.
    pretrained: ``True`` loads the model's pretrained weights (the pinned Hub revision, else rebuilt once
        from the registry's pinned ONNX file and cached; both sha256-checked); a path loads a local
        ``model.safetensors`` or a folder holding one, and the ``config.json`` beside it (classes, labels,
        preprocessing, stand-in flag); ``False`` leaves the layers' default initialization.
    num_classes: default: what the weights have (1000 for the zoo's own). Another number puts a fresh
        classifier on the ImageNet backbone, ready for fine-tuning; 0 removes it (``forward`` returns the
        pooled features).
    features_only, out_indices: a backbone whose ``forward`` returns one feature map per stage (all, or those
        in ``out_indices``), described by its ``feature_info``; see :mod:`zoo.modeling.backbone`.
    in_chans: input channels; the first convolution's weights are summed (1) or repeated and rescaled.
    drop_rate: dropout before the classifier. global_pool: "avg", "max", "avgmax" or "" (none, with
        num_classes=0), for models whose head pools.
    These options are recorded in ``pretrained_cfg["model_args"]`` and in a saved ``config.json``.
    """
    options = {k: kwargs.pop(k) for k in BACKBONE_OPTIONS if k in kwargs}
    if kwargs:
        raise TypeError(f"create_model() got unexpected keyword arguments: {', '.join(kwargs)}")
    if isinstance(name, str) and name.startswith("hf-hub:"):
        folder, architecture = hub_weights(name[len("hf-hub:"):])
        model = create_model(architecture, pretrained=folder, num_classes=num_classes)
        model.pretrained_cfg["weights"] = f"hf-hub:{name[len('hf-hub:'):].partition('@')[0]}@{folder.name}"
        return configure(model, model.pretrained_cfg.get("model_args"), **options)
    entry = resolved_entry(name)
    native = entry.num_classes
    cfg = entry_config(entry)
    state, where, config = None, None, {}
    if pretrained is True:
        found = resolve_pretrained(entry)
        state, where = read_safetensors(found.path), f"{name} ({found.description})"
        cfg.update(weights=found.uri, standin=found.standin)
    elif pretrained not in (False, None):
        state, where = read_safetensors(pretrained), f"{name} ({pretrained})"
        config = read_config(pretrained)
        if config.get("architecture", name) != name:
            raise WeightsError(f"{pretrained}: these weights are for {config['architecture']!r}, not {name!r} "
                               "(config.json 'architecture')")
        cfg.update({k: config[k] for k in DESCRIBED if k in config}, weights=str(pretrained))
    model = _construct(model_class(name), on_meta=state is not None)
    model.classifier_name = entry.classifier
    model.pretrained_cfg = cfg
    model.num_classes = native
    if state is not None:
        head = state.get(f"{entry.classifier}.weight")
        trained = int(head.shape[0]) if head is not None else native
        if head is None and config.get("num_classes") == 0:
            trained = 0  # saved without a classifier (num_classes=0, or a features_only backbone)
        if trained != native and num_classes not in (None, trained):
            raise WeightsError(f"{where}: the weights have a {trained}-class head, not num_classes={num_classes}; "
                               f"load them without num_classes, then call model.reset_classifier({num_classes})")
        if trained != native:
            model.reset_classifier(trained)  # a fine-tuned checkpoint with its own head
        model = restore(model, config.get("model_args"))  # the layers the weights were saved from
        fit(model, state, where)
        model.pretrained_cfg = {**cfg, "num_classes": trained}
    if num_classes is not None and model.num_classes != num_classes:
        model.reset_classifier(num_classes)
        if isinstance(model.pretrained_cfg.get("labels"), list):
            model.pretrained_cfg["labels"] = None  # a fresh head: the loaded label names no longer apply
        model.pretrained_cfg["accuracy"] = None
    return configure(model, config.get("model_args"), **options)


def _constructor(entry: Entry) -> Callable[..., ZooModel]:
    def build(pretrained: bool | str | os.PathLike = False, num_classes: int | None = None, **kwargs: Any) -> ZooModel:
        return create_model(entry.name, pretrained=pretrained, num_classes=num_classes, **kwargs)

    build.__name__ = build.__qualname__ = entry.name
    build.__doc__ = (f"{entry.description or entry.name}\n\n{entry.upstream or entry.source.file}. "
                     f"Paper: {entry.paper or '-'}. License: {entry.license or '-'}.\n\n"
                     "Arguments as for :func:`zoo.create_model`.")
    return build


def constructors() -> dict[str, Callable[..., ZooModel]]:
    return {name: _constructor(entry) for name, entry in load_registry().items()}


def constructor(name: str) -> Callable[..., ZooModel]:
    """``zoo.<name>``: looked up when first used, so a broken registry entry only troubles its own users."""
    return _constructor(load_registry().entry(name))


def model_config(model: ZooModel) -> dict[str, Any]:
    """The config.json that describes a model's weights (written by fine-tuning and push_to_hub)."""
    cfg = copy.deepcopy(model.pretrained_cfg)
    out = {"architecture": cfg["name"], "num_classes": model.num_classes, "labels": cfg.get("labels"),
           "input_size": cfg["input_size"], "preprocessing": cfg["preprocessing"], "standin": cfg.get("standin"),
           "accuracy": cfg.get("accuracy"), "base": cfg.get("base") or {"source": cfg.get("source"),
                                                                          "weights": cfg.get("weights")}}
    if "finetune" in cfg:
        out["finetune"] = cfg["finetune"]
    if cfg.get("model_args"):
        out["model_args"] = cfg["model_args"]
    return out


__all__ = ["ZooModel", "create_model", "list_models", "model_class", "constructors", "constructor", "model_config",
           "WeightsError"]
