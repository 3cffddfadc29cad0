"""Dynamically quantized recurrent classifiers (issue 24): small LSTM and GRU models exported from torch, through
onnxruntime's ``quantize_dynamic`` (DynamicQuantizeLSTM, MatMulInteger) and its graph optimizer
(DynamicQuantizeMatMul), converted and compared with onnxruntime on every output at two shapes.

onnxruntime runs with one intra-op thread: its LSTM quantizes the hidden state per batch chunk, and the chunks
follow the thread count (one thread, one chunk: what the generated code does)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from zoo.convert import load

SHAPES = ((1, 9, 12), (3, 5, 12))


class Classifier(nn.Module):
    """A per-step tagger: a recurrent layer, then a linear head on every step."""

    def __init__(self, kind: str, bidirectional: bool):
        super().__init__()
        self.rnn = getattr(nn, kind)(12, 16, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(32 if bidirectional else 16, 5)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _optimized(path: Path) -> Path:
    """The graph onnxruntime's optimizer makes of it (MatMulInteger + Cast + Mul -> DynamicQuantizeMatMul)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path.with_name(path.stem + "_opt.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Path(options.optimized_model_filepath)


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def recurrent(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = tmp_path_factory.mktemp("dynamic")
    made = {}
    for kind, bidirectional in (("LSTM", True), ("LSTM", False), ("GRU", True)):
        torch.manual_seed(0)
        model = Classifier(kind, bidirectional).eval()
        name = f"{kind}{'_bi' if bidirectional else ''}"
        float_path = root / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(*SHAPES[0]),), str(float_path), opset_version=17, dynamo=False,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch", 1: "steps"}, "y": {0: "batch", 1: "steps"}})
        for per_channel in (False, True):
            path = root / f"{name}_{'pc' if per_channel else 'pt'}.onnx"
            quantize_dynamic(str(float_path), str(path), per_channel=per_channel, weight_type=QuantType.QInt8)
            made[path.stem] = (model, path)
            made[path.stem + "_opt"] = (model, _optimized(path))
    return made


def _matches_onnxruntime(path: Path, module: torch.nn.Module) -> None:
    session = _session(path)
    for run, shape in enumerate(SHAPES):
        x = np.random.default_rng(run).standard_normal(shape).astype(np.float32)
        expected = session.run(None, {"x": x})
        with torch.no_grad():
            got = module(torch.from_numpy(x))
        got = got if isinstance(got, (tuple, list)) else [got]
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            # exact: the same integers, the same float32 products, onnxruntime's own sigmoid and tanh
            np.testing.assert_array_equal(g.numpy(), e, err_msg=f"{path.name} at {shape}")


@pytest.mark.parametrize("name", ["LSTM_bi_pt", "LSTM_bi_pc", "LSTM_pt", "LSTM_bi_pc_opt", "LSTM_pt_opt",
                                  "GRU_bi_pc", "GRU_bi_pt_opt"])
def test_dynamically_quantized_recurrent_matches_onnxruntime(recurrent, name):
    _, path = recurrent[name]
    ops = _ops(path)
    assert ("DynamicQuantizeLSTM" in ops) == name.startswith("LSTM")
    assert ("DynamicQuantizeMatMul" in ops) == name.endswith("_opt")
    module = load(path)
    _matches_onnxruntime(path, module)
    source = Path(sys.modules[type(module).__module__].__file__).read_text()
    assert "nn.LSTM(" not in source  # integer semantics, not the float layer


@pytest.mark.parametrize("name", ["LSTM_bi_pc_opt", "GRU_bi_pt_opt"])
def test_dequantize_gives_float_lstm_and_linear(recurrent, name):
    """dequantize=True: nn.LSTM and nn.Linear with the dequantized weights, near the float model, trainable."""
    model, path = recurrent[name]
    module = load(path, dequantize=True)
    source = Path(sys.modules[type(module).__module__].__file__).read_text()
    assert "nn.Linear(" in source and "integer_matmul" not in source and "dynamic_quantize" not in source
    assert ("nn.LSTM(" in source) == name.startswith("LSTM")
    x = torch.randn(2, 6, 12)
    with torch.no_grad():
        reference = model(x)
    got = module(x)
    assert torch.nn.functional.cosine_similarity(got.flatten(), reference.flatten(), dim=0) > 0.99
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
    session = _session(path)
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
    model = onnx.load(str(recurrent["LSTM_pt"][1]))
    lstm = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"]))
    lstm.input[4] = "lens"
    path = tmp_path / "lens.onnx"
    onnx.save(model, str(path))
    with pytest.raises(Exception, match="sequence_lens"):
        load(path)
