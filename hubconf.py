"""torch.hub entry points: ``torch.hub.load("<owner>/<repo>", "densenet121", pretrained=True)``.

One entry per model in zoo/registry.yaml, the same functions as ``zoo.<name>``.
"""
dependencies = ["torch", "torchvision", "onnx", "safetensors", "huggingface_hub", "yaml"]

from zoo.modeling.factory import constructors as _constructors  # noqa: E402

globals().update(_constructors())
