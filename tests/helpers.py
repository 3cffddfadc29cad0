"""Tiny ONNX graphs built in tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers=(), opset=17, path: Path | None = None, **graph_kw):
    graph = helper.make_graph(nodes, graph_kw.pop("name", "g"), inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **graph_kw)
    model.ir_version = min(model.ir_version, 10)
    if path is not None:
        onnx.save(model, str(path))
    return model


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def small_convnet(path: Path, opset: int = 13) -> Path:
    """conv -> relu -> global pool -> flatten -> gemm, with a dynamic batch axis."""
    rng = np.random.default_rng(0)
    inits = {
        "conv.weight": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(0, 0.1, (4,)).astype(np.float32),
        "fc.weight": rng.normal(0, 0.3, (5, 4)).astype(np.float32),
        "fc.bias": rng.normal(0, 0.1, (5,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["f"], name="/Flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="/fc/Gemm", transB=1),
    ]
    make_model(nodes, [tensor("x", ["batch", 3, 8, 8])], [tensor("y", ["batch", 5])], inits, opset=opset, path=path)
    return path
