"""LSTM, GRU and RNN become nn.LSTM / nn.GRU / nn.RNN with PyTorch's gate order, matching onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from onnx.reference import ReferenceEvaluator

from zoo.convert import ConversionError, convert, load

from .helpers import assert_outputs_match, make_model, run_onnxruntime, tensor

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SEQ, BATCH, INPUT, HIDDEN = 5, 2, 3, 4


def _model(path, op, direction="forward", layout=0, initial=True, bias=True, **attrs):
    rng = np.random.default_rng(0)
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    inits = {"W": rng.normal(0, 0.5, (d, g * HIDDEN, INPUT)).astype(np.float32),
             "R": rng.normal(0, 0.5, (d, g * HIDDEN, HIDDEN)).astype(np.float32)}
    inputs = ["x", "W", "R", "B" if bias else ""]
    if bias:
        inits["B"] = rng.normal(0, 0.5, (d, 2 * g * HIDDEN)).astype(np.float32)
    state_shape = ["batch", d, HIDDEN] if layout else [d, "batch", HIDDEN]
    graph_inputs = [tensor("x", ["batch", SEQ, INPUT] if layout else [SEQ, "batch", INPUT])]
    if initial:
        inputs += ["", "h0"] + (["c0"] if op == "LSTM" else [])
        graph_inputs += [tensor("h0", state_shape)] + ([tensor("c0", state_shape)] if op == "LSTM" else [])
    outputs = ["y", "y_h"] + (["y_c"] if op == "LSTM" else [])
    y_shape = ["batch", SEQ, d, HIDDEN] if layout else [SEQ, d, "batch", HIDDEN]
    if op == "GRU":
        attrs.setdefault("linear_before_reset", 1)
    if "activations" in attrs:
        attrs["activations"] = list(attrs["activations"]) * d
    node = helper.make_node(op, inputs, outputs, hidden_size=HIDDEN, direction=direction, layout=layout, **attrs)
    make_model([node], graph_inputs, [tensor("y", y_shape)] + [tensor(o, state_shape) for o in outputs[1:]],
               inits, opset=14, path=path)
    return path


def _compare(path, batch=BATCH):
    model = onnx.load(path)
    rng = np.random.default_rng(1)
    feeds = {}
    for i in model.graph.input:
        shape = [d.dim_value or batch for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    if any(a.name == "layout" and a.i for a in model.graph.node[0].attribute):
        expected = ReferenceEvaluator(model).run(None, feeds)  # onnxruntime has no layout=1 recurrent kernels
    else:
        expected = run_onnxruntime(path, feeds)
    module = load(path)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[i.name]) for i in model.graph.input])
    assert_outputs_match(got, expected, rtol=1e-5, atol=1e-5)
    return module


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_matches_onnxruntime(tmp_path, op, direction, layout):
    path = _model(tmp_path / "rnn.onnx", op, direction, layout)
    _compare(path, batch=1)
    module = _compare(path, batch=3)
    layer = next(m for m in module.modules() if isinstance(m, getattr(torch.nn, op)))
    assert layer.bidirectional == (direction == "bidirectional") and layer.batch_first == bool(layout)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_without_bias_or_initial_state(tmp_path, op):
    _compare(_model(tmp_path / "rnn.onnx", op, initial=False, bias=False))


def test_relu_rnn(tmp_path):
    _compare(_model(tmp_path / "rnn.onnx", "RNN", activations=["Relu"]))


def test_reads_like_a_hand_written_layer_and_trains(tmp_path):
    path = _model(tmp_path / "lstm.onnx", "LSTM", "bidirectional")
    source = convert(path, tmp_path / "out").source_path.read_text()
    assert "nn.LSTM(3, 4, bidirectional=True)" in source
    module = load(path).train()
    y, h, c = module(torch.randn(SEQ, 2, INPUT), torch.zeros(2, 2, HIDDEN), torch.zeros(2, 2, HIDDEN))
    (y.square().sum() + h.sum()).backward()
    layer = next(m for m in module.modules() if isinstance(m, torch.nn.LSTM))
    assert layer.weight_hh_l0_reverse.grad.abs().sum() > 0


@pytest.mark.parametrize("op,attrs", [
    ("GRU", {"linear_before_reset": 0}),
    ("LSTM", {"clip": 0.7}),
    ("RNN", {"activations": ["Sigmoid"]}),
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Softsign"]}),
])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_what_nn_layers_cannot_express_runs_as_an_exact_step_loop(tmp_path, op, attrs, direction):
    path = _model(tmp_path / "rnn.onnx", op, direction, **attrs)
    source = convert(path, tmp_path / "out").source_path.read_text()
    assert "recurrent_cells(" in source and f"nn.{op}(" not in source
    module = _compare(path)
    module.train()
    y = module(*[torch.randn(*s) for s in [(SEQ, 2, INPUT)] + [(2 if direction == "bidirectional" else 1, 2,
                                                                  HIDDEN)] * (2 if op == "LSTM" else 1)])
    y[0].sum().backward()
    assert all(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_per_sample_sequence_lengths_and_peepholes(tmp_path, direction):
    rng = np.random.default_rng(3)
    d = 2 if direction == "bidirectional" else 1
    inits = {"W": rng.normal(0, 0.5, (d, 4 * HIDDEN, INPUT)).astype(np.float32),
             "R": rng.normal(0, 0.5, (d, 4 * HIDDEN, HIDDEN)).astype(np.float32),
             "B": rng.normal(0, 0.5, (d, 8 * HIDDEN)).astype(np.float32),
             "P": rng.normal(0, 0.5, (d, 3 * HIDDEN)).astype(np.float32),
             "lens": np.array([SEQ, 2, 4], np.int32)}
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "lens", "", "", "P"], ["y", "y_h", "y_c"],
                            hidden_size=HIDDEN, direction=direction)
    path = tmp_path / "lstm.onnx"
    make_model([node], [tensor("x", [SEQ, 3, INPUT])],
               [tensor("y", [SEQ, d, 3, HIDDEN]), tensor("y_h", [d, 3, HIDDEN]), tensor("y_c", [d, 3, HIDDEN])],
               inits, opset=14, path=path)
    _compare(path, batch=3)


def test_weights_computed_at_run_time(tmp_path):
    """W arrives as a graph input: the step loop reads it like any tensor."""
    rng = np.random.default_rng(4)
    node = helper.make_node("GRU", ["x", "W", "R"], ["y", "y_h"], hidden_size=HIDDEN, linear_before_reset=1)
    path = tmp_path / "gru.onnx"
    make_model([node], [tensor("x", [SEQ, "batch", INPUT]), tensor("W", [1, 3 * HIDDEN, INPUT])],
               [tensor("y", [SEQ, 1, "batch", HIDDEN]), tensor("y_h", [1, "batch", HIDDEN])],
               {"R": rng.normal(0, 0.5, (1, 3 * HIDDEN, HIDDEN)).astype(np.float32)}, opset=14, path=path)
    _compare(path)


def test_activation_parameters_are_refused_by_name(tmp_path):
    path = _model(tmp_path / "rnn.onnx", "RNN", activations=["LeakyRelu"], activation_alpha=[0.3])
    with pytest.raises(ConversionError, match="RNN node.*activations"):
        load(path)
