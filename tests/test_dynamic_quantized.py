"""Dynamically quantized recurrent taggers (issue 24): small LSTM and GRU models exported from torch, through
onnxruntime's ``quantize_dynamic`` (DynamicQuantizeLSTM, MatMulInteger) and its graph optimizer
(DynamicQuantizeMatMul), built by scripts/ort_graphs.py, converted and compared with onnxruntime on every
output at two shapes: bit for bit (onnxruntime runs with one intra-op thread: its LSTM quantizes the hidden
state per batch chunk, and the chunks follow the thread count)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from zoo.convert import load

from .helpers import script

ort_graphs = script("ort_graphs")


@pytest.fixture(scope="module")
def recurrent(tmp_path_factory):
    return ort_graphs.recurrent_graphs(tmp_path_factory.mktemp("dynamic"))


NAMES = ["lstm_bi_pt", "lstm_bi_pc", "lstm_pt", "lstm_pc", "gru_bi_pt", "gru_bi_pc"]


@pytest.mark.parametrize("name", [n + suffix for n in NAMES for suffix in ("", "_opt")])
def test_dynamically_quantized_recurrent_matches_onnxruntime(recurrent, name):
    made = recurrent[name]
    present = {n.op_type for n in onnx.load(str(made.path)).graph.node if n.domain == "com.microsoft"}
    assert made.ops <= present
    module = load(made.path)
    problem = ort_graphs.check(module, made)  # tolerance 0: the same integers, float32 products, sigmoid, tanh
    assert not problem, f"{name}: {problem}"
    source = Path(sys.modules[type(module).__module__].__file__).read_text()
    assert ("def dynamic_quantized_lstm" in source) == name.startswith("lstm")


@pytest.mark.parametrize("name", ["lstm_bi_pc_opt", "gru_bi_pt_opt"])
def test_dequantize_gives_float_lstm_and_linear(recurrent, tmp_path, name):
    """dequantize=True: nn.LSTM and nn.Linear with the dequantized weights, near the float model, trainable."""
    made = recurrent[name]
    module = load(made.path, dequantize=True)
    source = Path(sys.modules[type(module).__module__].__file__).read_text()
    assert "nn.Linear(" in source and "integer_matmul" not in source and "dynamic_quantize" not in source
    assert ("nn.LSTM(" in source) == name.startswith("lstm")
    float_path = made.path.parent / f"{name.split('_p')[0]}.onnx"  # the export it was quantized from
    reference = load(float_path)
    x = torch.randn(2, 6, 12)
    with torch.no_grad():
        expected = reference(x)
    got = module(x)
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.99
    got.square().mean().backward()
    assert all(p.grad is not None for p in module.parameters())
    assert all(p.dtype == torch.float32 for p in module.parameters())


def _matmul_integer_to_float(bias: bool, per_column: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    b = rng.integers(-128, 128, (8, 6)).astype(np.int8)
    b_scale = rng.uniform(0.01, 0.05, (6,) if per_column else ()).astype(np.float32)
    b_zero = np.zeros((6,) if per_column else (), np.int8)
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(b_scale, "b_scale"),
             numpy_helper.from_array(b_zero, "b_zero")]
    inputs = ["xq", "b", "x_scale", "b_scale", "x_zero", "b_zero"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "bias"))
        inputs.append("bias")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_scale", "x_zero"]),
             helper.make_node("MatMulIntegerToFloat", inputs, ["y"], domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5, 6])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("bias, per_column", [(True, True), (False, False)])
def test_matmul_integer_to_float_matches_onnxruntime(tmp_path, bias, per_column):
    path = tmp_path / "m.onnx"
    onnx.save(_matmul_integer_to_float(bias, per_column), str(path))
    session = ort_graphs.session(path)
    module = load(path)
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 5, 8)).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_array_equal(module(torch.from_numpy(x)).numpy(), session.run(None, {"x": x})[0])
    float_module = load(path, dequantize=True)
    source = Path(sys.modules[type(float_module).__module__].__file__).read_text()
    assert "nn.Linear(" in source and "integer_matmul" not in source


def test_dynamic_quantize_lstm_refuses_what_it_cannot_compute(recurrent, tmp_path):
    """Per-step sequence lengths that may differ from the sequence: a clear error naming the node."""
    model = onnx.load(str(recurrent["lstm_pt"].path))
    lstm = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"]))
    lstm.input[4] = "lens"
    path = tmp_path / "lens.onnx"
    onnx.save(model, str(path))
    with pytest.raises(Exception, match="sequence_lens"):
        load(path)
