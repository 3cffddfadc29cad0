"""What conformance does not cover of FlexAttention, LinearAttention and CausalConvWithState: modifier
subgraphs reading the outer graph, and gradients through the generated helpers."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from zoo.convert import load

from .helpers import tensor

RNG = np.random.default_rng(0)


def _save(nodes, inputs, outputs, path, preview=False):
    opsets = [helper.make_opsetid("", 27)] + ([helper.make_opsetid("ai.onnx.preview", 1)] if preview else [])
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=opsets)
    onnx.save(model, str(path))
    return path


def test_flex_attention_score_mod_reads_the_outer_graph_and_back_propagates(tmp_path):
    # score_mod adds a bias computed in the main graph (Relu of an input): an outer-scope read
    score_mod = helper.make_graph([helper.make_node("Add", ["scores", "positive_bias"], ["out"])], "score_mod",
                                  [tensor("scores", ["B", "H", "L", "S"])], [tensor("out", ["B", "H", "L", "S"])])
    nodes = [helper.make_node("Relu", ["bias"], ["positive_bias"]),
             helper.make_node("FlexAttention", ["q", "k", "v"], ["y"], domain="ai.onnx.preview",
                              score_mod=score_mod)]
    path = _save(nodes, [tensor("q", [2, 4, 3, 8]), tensor("k", [2, 2, 5, 8]), tensor("v", [2, 2, 5, 6]),
                         tensor("bias", [3, 5])], [tensor("y", [2, 4, 3, 6])], tmp_path / "flex.onnx", preview=True)
    q, k, v = (RNG.standard_normal(s).astype(np.float32) for s in ((2, 4, 3, 8), (2, 2, 5, 8), (2, 2, 5, 6)))
    bias = RNG.standard_normal((3, 5)).astype(np.float32)
    k2, v2 = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    scores = q @ k2.swapaxes(-1, -2) / np.sqrt(8) + np.maximum(bias, 0)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    expected = (probs / probs.sum(-1, keepdims=True)) @ v2

    module = load(path)
    tq = torch.from_numpy(q).requires_grad_()
    tb = torch.from_numpy(bias).requires_grad_()
    got = module(tq, torch.from_numpy(k), torch.from_numpy(v), tb)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    got.square().sum().backward()
    assert tq.grad is not None and tq.grad.abs().sum() > 0
    assert tb.grad is not None and tb.grad.abs().sum() > 0


def test_linear_attention_and_causal_conv_back_propagate(tmp_path):
    nodes = [helper.make_node("CausalConvWithState", ["x", "w"], ["c", "state"], activation="silu"),
             helper.make_node("LinearAttention", ["c", "c", "c", "", "decay", "beta"], ["y", "present"],
                              q_num_heads=2, kv_num_heads=2)]
    path = _save(nodes, [tensor("x", [1, 5, 8]), tensor("w", [5, 1, 3]), tensor("decay", [1, 5, 2]),
                         tensor("beta", [1, 5, 2])],
                 [tensor("y", [1, 5, 8]), tensor("present", [1, 2, 4, 4]), tensor("state", [1, 5, 2])],
                 tmp_path / "la.onnx")
    module = load(path)
    x = torch.randn(1, 5, 8, requires_grad=True)
    w = torch.randn(5, 1, 3, requires_grad=True)
    y, present, state = module(x, w, -torch.rand(1, 5, 2), torch.rand(1, 5, 2))
    assert y.shape == (1, 5, 8) and present.shape == (1, 2, 4, 4) and state.shape == (1, 5, 2)
    (y.sum() + present.sum()).backward()
    assert x.grad.abs().sum() > 0 and w.grad.abs().sum() > 0
