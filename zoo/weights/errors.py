"""The error every weights source raises (the Hub, the rebuild from ONNX, local files, hf-hub repositories)."""


class WeightsError(ValueError):
    """Weights could not be found, fetched, verified or fitted; the message says which and why."""
