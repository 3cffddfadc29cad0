"""The one exception type every conversion failure raises."""


class ConversionError(ValueError):
    """An ONNX file could not be converted; the message names the file and, where known, the node."""


class Unsupported(Exception):
    """Raised by an op handler for a case it does not cover; the converter turns it into ConversionError."""
