"""Model constructors derived from the registry: create_model, list_models and one function per entry."""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
from functools import lru_cache
from typing import Any, Callable

import torch
from torch import nn

from .registry import Entry, load_registry
from .weights import WeightsError, download, fit, read_safetensors


class ZooModel(nn.Module):
    """Mixed into every generated model: classifier access, input checks and the pretrained config."""

    classifier_name: str
    pretrained_cfg: dict[str, Any]

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier of the same kind (Linear or 1x1 Conv) with ``num_classes`` outputs."""
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        old = self.get_classifier()
        if isinstance(old, nn.Linear):
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        elif isinstance(old, nn.Conv2d):
            new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size, stride=old.stride,
                            padding=old.padding, bias=old.bias is not None)
        else:
            raise TypeError(f"cannot reset a classifier of type {type(old).__name__}")
        setattr(self, self.classifier_name, new.to(device=old.weight.device, dtype=old.weight.dtype))
        self.num_classes = num_classes
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.pretrained_cfg["input_size"][0]
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"{self.pretrained_cfg['name']} expects input of shape (N, {channels}, H, W), "
                             f"e.g. (N, {', '.join(map(str, self.pretrained_cfg['input_size']))}); "
                             f"got {tuple(x.shape)}")
        return super().forward(x)


@lru_cache(maxsize=None)
def model_class(name: str) -> type[ZooModel]:
    """The generated class of a zoo model, with ZooModel mixed in."""
    module = importlib.import_module(f"zoo.models.{name}")
    generated = [c for _, c in inspect.getmembers(module, inspect.isclass)
                 if issubclass(c, nn.Module) and c.__module__ == module.__name__]
    if len(generated) != 1:
        raise RuntimeError(f"zoo/models/{name}.py should define one model class; run scripts/build.py {name}")
    cls = generated[0]
    return type(cls.__name__, (ZooModel, cls), {"__module__": module.__name__, "__doc__": cls.__doc__})


def _config(entry: Entry, num_classes: int, weights: str | None, standin: bool | None) -> dict[str, Any]:
    cfg = entry.to_dict()
    cfg["preprocessing"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg["preprocessing"].items()}
    cfg["input_size"] = list(entry.input_size)
    cfg["num_classes"] = num_classes
    cfg["weights"] = weights
    cfg["standin"] = standin
    return cfg


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the zoo's models, optionally filtered by a shell-style pattern such as ``"res*"``."""
    names = list(load_registry())
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def create_model(name: str, pretrained: bool | str | os.PathLike = False, num_classes: int = 1000,
                 **kwargs: Any) -> ZooModel:
    """Build a zoo model.

    pretrained: ``True`` downloads the pinned weights from the Hub (checked against their sha256);
        a path loads a local ``model.safetensors`` (or a folder holding one); ``False`` leaves the
        layers' default initialization.
    num_classes: anything but 1000 puts a fresh classifier (of the registry's classifier layer) on top of
        the loaded backbone, ready for fine-tuning.
    """
    if kwargs:
        raise TypeError(f"create_model() got unexpected keyword arguments: {', '.join(kwargs)}")
    registry = load_registry()
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; zoo models: {', '.join(registry)}")
    entry = registry[name]
    model = model_class(name)()
    model.classifier_name = entry.classifier
    weights, standin, state = None, None, None
    if pretrained is True:
        path, pin = download(name)
        state, where = read_safetensors(path), f"{name} ({pin.repo}@{pin.revision[:12]})"
        weights, standin = f"hf://{pin.repo}@{pin.revision}", pin.standin
    elif pretrained not in (False, None):
        state, where, weights = read_safetensors(pretrained), f"{name} ({pretrained})", str(pretrained)
    model.pretrained_cfg = _config(entry, 1000, weights, standin)
    model.num_classes = 1000
    head = state.get(f"{entry.classifier}.weight") if state is not None else None
    if head is not None and head.shape[0] == num_classes != 1000:
        model.reset_classifier(num_classes)  # a fine-tuned checkpoint with its own head
    if state is not None:
        fit(model, state, where)
    if model.num_classes != num_classes:
        model.reset_classifier(num_classes)
    return model


def _constructor(entry: Entry) -> Callable[..., ZooModel]:
    def build(pretrained: bool | str | os.PathLike = False, num_classes: int = 1000, **kwargs: Any) -> ZooModel:
        return create_model(entry.name, pretrained=pretrained, num_classes=num_classes, **kwargs)

    build.__name__ = build.__qualname__ = entry.name
    build.__doc__ = (f"{entry.description}\n\n{entry.upstream}. Paper: {entry.paper}. License: {entry.license}.\n\n"
                     "Arguments as for :func:`zoo.create_model`.")
    return build


def constructors() -> dict[str, Callable[..., ZooModel]]:
    return {name: _constructor(entry) for name, entry in load_registry().items()}


__all__ = ["ZooModel", "create_model", "list_models", "model_class", "constructors", "WeightsError"]
