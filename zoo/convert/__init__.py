"""zoo.convert: ONNX files in, readable PyTorch source and safetensors weights out.

>>> from zoo.convert import convert, load, layers, verify
>>> result = convert("model.onnx", "out/")          # out/model.py + out/model.safetensors
>>> module = load("model.onnx")                      # an nn.Module, weights loaded
>>> module = load_converted("out/")                  # what convert wrote, read back
>>> print(verify("model.onnx", module))              # compared with onnxruntime
"""
from .api import ConversionResult, LayerInfo, convert, layers, load, load_converted
from .errors import ConversionError, Unsupported
from .lower import Multi, NodeContext
from .registry import register_op, supported_ops
from .verification import VerificationReport, verify

__all__ = ["convert", "load", "load_converted", "layers", "verify", "register_op", "supported_ops", "ConversionError",
           "Unsupported", "ConversionResult", "LayerInfo", "VerificationReport", "NodeContext", "Multi"]
