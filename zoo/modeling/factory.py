"""Model constructors derived from the registry: create_model, list_models and one function per entry."""
from __future__ import annotations

import copy
import fnmatch
import importlib.util
import inspect
import logging
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..convert.naming import class_name
from ..registry import PACKAGE_MODELS, Entry, RegistryError, load_registry
from ..weights.pretrained import WeightsError, fit, read_config, read_safetensors, resolve_pretrained

log = logging.getLogger("zoo")
NATIVE_CLASSES = 1000


class ZooModel(nn.Module):
    """Mixed into every generated model: classifier access, input checks and the pretrained config."""

    classifier_name: str
    pretrained_cfg: dict[str, Any]

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier of the same kind (Linear or 1x1 Conv) with ``num_classes`` outputs; 0 removes it
        (``forward`` then returns the pooled features). global_pool: as for :func:`create_model`."""
        from .backbone import new_classifier, set_head

        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: no classifier), got {num_classes!r}")
        new = new_classifier(self, num_classes)
        parent, _, leaf = self.classifier_name.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, new)
        self.num_classes = num_classes
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}
        if global_pool is not None or self.pretrained_cfg.get("model_args"):
            set_head(self, global_pool=global_pool)  # the head options follow the new classifier

    @property
    def feature_info(self):
        """Per stage (every drop of spatial resolution, and the final features): num_chs, reduction, module."""
        from .backbone import FeatureInfo, stages

        found = stages(self)
        return FeatureInfo(found, range(len(found)))

    def forward_intermediates(self, x: torch.Tensor, indices=None, intermediates_only: bool = False):
        """(final feature map, [one feature map per stage in ``indices``]), as timm's forward_intermediates."""
        from .backbone import forward_intermediates

        return forward_intermediates(self, x, indices, intermediates_only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.pretrained_cfg["input_size"][0]
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"{self.pretrained_cfg['name']} expects input of shape (N, {channels}, H, W), "
                             f"e.g. (N, {', '.join(map(str, self.pretrained_cfg['input_size']))}); "
                             f"got {tuple(x.shape)}")
        if "_zoo_forward" in self.__dict__:  # another global pooling (zoo.modeling.backbone.set_head): a rewritten graph
            return self.__dict__["_zoo_forward"](x)
        native = tuple(self.pretrained_cfg["native_size"])
        if self.pretrained_cfg.get("global_pool") == "adaptive" or tuple(x.shape[2:]) == native:
            return super().forward(x)
        try:
            return super().forward(x)
        except RuntimeError as exc:  # a fixed pooling window (or a flatten into a Linear) that needs the native size
            from .backbone import adaptive_pool_would_help

            hint = (" A registry entry with `global_pool: adaptive` accepts other sizes."
                    if adaptive_pool_would_help(self) else "")
            raise ValueError(f"{self.pretrained_cfg['name']} needs {native[0]}x{native[1]} inputs (its layers assume "
                             f"that size); got {x.shape[2]}x{x.shape[3]}: resize to it (zoo.transforms(model) does)."
                             + hint) from exc


def class_name_for(name: str) -> str:
    """The importable name of a zoo model's class in :mod:`zoo.modeling.architectures` (``Zoo`` + generated name)."""
    return f"Zoo{class_name(name)}"


def _generated_class(name: str) -> type[nn.Module]:
    registry = load_registry()
    registry.entry(name)
    path = registry.models_dir / f"{name}.py"
    if not path.is_file():
        hint = "" if registry.models_dir == PACKAGE_MODELS else f" --registry {registry.path}"
        raise RegistryError(f"{name}: no generated source {path}; build it with `python scripts/build.py {name}{hint}`")
    add_models_dir(registry.models_dir)
    module_name = f"zoo.models.{name}"
    module = sys.modules.get(module_name)
    if module is None or Path(module.__file__).resolve() != path.resolve():
        # Another registry's model of the same name may be imported already: this registry's file wins.
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    generated = getattr(module, class_name(name), None)
    if not (inspect.isclass(generated) and issubclass(generated, nn.Module)):
        raise RegistryError(f"{path} should define class {class_name(name)}; run scripts/build.py {name}")
    return generated


def add_models_dir(folder: Path) -> None:
    """Generated sources of another registry (``ZOO_REGISTRY``) import as ``zoo.models.<name>`` too."""
    import zoo.models

    where = str(folder)
    if where not in zoo.models.__path__:
        zoo.models.__path__.insert(0, where)


@lru_cache(maxsize=None)
def _model_class(name: str, registry_file: str) -> type[ZooModel]:
    generated = _generated_class(name)
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


def _config(entry: Entry) -> dict[str, Any]:
    cfg = entry.to_dict()
    cfg["preprocessing"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg["preprocessing"].items()}
    cfg["input_size"] = list(entry.input_size)
    cfg["native_size"] = list(entry.input_size[1:])
    cfg["num_classes"] = NATIVE_CLASSES
    cfg["weights"] = None
    cfg["standin"] = None
    return cfg


# What a weights folder's config.json may say about the weights beside it.
DESCRIBED = ("num_classes", "labels", "preprocessing", "input_size", "standin", "accuracy", "finetune", "base",
             "model_args")
BACKBONE_OPTIONS = ("features_only", "out_indices", "in_chans", "drop_rate", "global_pool")


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the zoo's models, optionally filtered by a shell-style pattern such as ``"res*"``."""
    registry = load_registry()
    for name, error in registry.errors.items():
        log.warning("registry entry %s is skipped: %s", name, error)
    return [n for n in registry if pattern is None or fnmatch.fnmatch(n, pattern)]


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
    from .backbone import configure, restore

    options = {k: kwargs.pop(k) for k in BACKBONE_OPTIONS if k in kwargs}
    if kwargs:
        raise TypeError(f"create_model() got unexpected keyword arguments: {', '.join(kwargs)}")
    if isinstance(name, str) and name.startswith("hf-hub:"):
        from ..publish.hub import from_hub

        model = from_hub(name[len("hf-hub:"):], num_classes=num_classes)
        return configure(model, model.pretrained_cfg.get("model_args"), **options)
    entry = load_registry().entry(name)
    cfg = _config(entry)
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
    model.num_classes = NATIVE_CLASSES
    if state is not None:
        head = state.get(f"{entry.classifier}.weight")
        trained = int(head.shape[0]) if head is not None else NATIVE_CLASSES
        if head is None and config.get("num_classes") == 0:
            trained = 0  # saved without a classifier (num_classes=0, or a features_only backbone)
        if trained != NATIVE_CLASSES and num_classes not in (None, trained):
            raise WeightsError(f"{where}: the weights have a {trained}-class head, not num_classes={num_classes}; "
                               f"load them without num_classes, then call model.reset_classifier({num_classes})")
        if trained != NATIVE_CLASSES:
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
    build.__doc__ = (f"{entry.description}\n\n{entry.upstream}. Paper: {entry.paper}. License: {entry.license}.\n\n"
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
