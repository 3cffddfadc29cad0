"""zoo: a pretrained vision model zoo for PyTorch, converted from ONNX into readable PyTorch source.

>>> import zoo
>>> model = zoo.densenet121(pretrained=True)          # sha256-checked weights: pinned Hub revision or upstream ONNX
>>> model = zoo.create_model("resnet50", num_classes=10)
>>> preprocess, names = zoo.transforms(model), zoo.labels(model)
"""
import os as _os

from .version import __version__  # noqa: F401

from .modeling.factory import WeightsError, constructor, create_model, list_models  # noqa: E402
from .modeling.model import ZooModel  # noqa: E402
from .modeling.fuse import fuse  # noqa: E402
from .publish.hub import push_to_hub  # noqa: E402
from .modeling.optimize import optimize  # noqa: E402
from .modeling.optim import param_groups  # noqa: E402
from .modeling.preprocess import labels, transforms  # noqa: E402
from .registry import RegistryError, add_models_dir as _add_models_dir, models_dir as _models_dir  # noqa: E402
from .tasks.export import ExportError, export  # noqa: E402
from .tasks.evaluate import evaluate  # noqa: E402
from .tasks.predict import embed, predict  # noqa: E402

if _os.environ.get("ZOO_REGISTRY"):
    _add_models_dir(_models_dir())  # so pickled models of another registry load in a fresh process

_API = ["create_model", "list_models", "fuse", "optimize", "transforms", "labels", "push_to_hub", "param_groups",
        "evaluate", "predict", "embed", "export", "ZooModel", "WeightsError", "RegistryError", "ExportError"]


def __getattr__(name: str):
    """``zoo.<model>``: one constructor per registry entry, read from the registry when first used."""
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return constructor(name)
    except RegistryError as exc:
        raise AttributeError(f"module 'zoo' has no attribute {name!r} ({exc})") from None


def __dir__():
    return sorted(set(globals()) | set(list_models()))


__all__ = _API
