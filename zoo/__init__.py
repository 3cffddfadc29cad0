"""zoo: a pretrained vision model zoo for PyTorch, converted from ONNX into readable PyTorch source."""
__version__ = "0.1.0"
