"""The classes of the zoo's models, by name: ``zoo.modeling.architectures.ZooDensenet121`` is the class of
``zoo.densenet121()``, its generated class with :class:`zoo.ZooModel` mixed in.

Looked up on first use, so pickle, ``torch.save(model)`` and ``copy.deepcopy`` find a model's class by
its import path in any process that uses the same registry (``ZOO_REGISTRY``).
"""
from __future__ import annotations

from ..registry import load_registry
from .factory import class_name_for, model_class


def __getattr__(attr: str):
    for name in load_registry():
        if class_name_for(name) == attr:
            return model_class(name)
    raise AttributeError(f"module 'zoo.modeling.architectures' has no model class {attr!r}")


def __dir__() -> list[str]:
    return [class_name_for(name) for name in load_registry()]
