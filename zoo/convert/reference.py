"""onnxruntime as the reference executor: the session verify, the comparison scripts and the exactness tests compare
against (the export check, the shape probe and a few float-only tests still open their own).

On an x86-64 CPU without VNNI (AVX2, AVX-512 without VNNI), onnxruntime multiplies uint8 activations by int8
weights with an instruction that adds pairs of products in 16 bits and saturates: the result then depends on the
CPU, not on the graph. ``session.x64quantprecision`` makes it use its exact uint8 x uint8 kernels instead, so the
reference computes what the graph says on every machine (it changes nothing where VNNI is present).
"""
from __future__ import annotations

import os
from typing import Union

import onnx

Source = Union[str, os.PathLike, bytes, onnx.ModelProto]


def session(source: Source, *, optimization: str | None = None, threads: int | None = None):
    """An onnxruntime CPU session of ``source`` (a path, serialized bytes or a ModelProto) with exact integer
    arithmetic and no spinning threads. ``optimization``: 'disable', 'basic', 'extended' or 'all' (onnxruntime's
    default); ``threads``: intra-op threads (onnxruntime's default: one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.x64quantprecision", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimization is not None:
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
    if isinstance(source, onnx.ModelProto):
        source = source.SerializeToString()
    elif not isinstance(source, bytes):
        source = os.fspath(source)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
