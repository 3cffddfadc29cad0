"""zoo: a pretrained vision model zoo for PyTorch, converted from ONNX into readable PyTorch source.

>>> import zoo
>>> model = zoo.densenet121(pretrained=True)          # weights from the Hub, sha256-checked
>>> model = zoo.create_model("resnet50", num_classes=10)
>>> preprocess, names = zoo.transforms("resnet50"), zoo.labels("resnet50")
"""
__version__ = "0.1.0"

from .factory import WeightsError, ZooModel, constructors, create_model, list_models  # noqa: E402
from .fuse import fuse  # noqa: E402
from .preprocess import labels, transforms  # noqa: E402
from .registry import RegistryError  # noqa: E402

# One constructor per registry entry (zoo.squeezenet1_1, zoo.densenet121, ...): no hand-written Python.
globals().update(constructors())

__all__ = ["create_model", "list_models", "fuse", "transforms", "labels", "ZooModel", "WeightsError", "RegistryError",
           *constructors()]
