"""Graphs that onnxruntime's tools made of transformer encoders (issue 24): tiny torchvision ViT and Swin and a
tiny BERT (transformers, random weights, built offline) exported, then fused by
``onnxruntime.transformers.optimizer`` (model_type vit / swin / bert / t5; float32, float16), by onnxruntime's
own graph optimizer, quantized by ``quantize_dynamic`` and to 4 bits by ``MatMulNBitsQuantizer``
(scripts/ort_graphs.py builds them). Each converted graph is compared with onnxruntime on every output at two
shapes, and must carry the com.microsoft ops it is meant to test (a fusion that stops happening fails here
instead of passing untested)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from zoo.convert import load, reference

from .helpers import script

ort_graphs = script("ort_graphs")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    return ort_graphs.transformer_graphs(tmp_path_factory.mktemp("fusions"))


NAMES = ["bert_opt", "bert_mha", "bert_fp16", "bert_ort", "bert_q", "bert_mha_q", "bert_4bit", "vit_opt",
         "vit14_opt", "vit_fastgelu", "vit_qo", "vit_4bit", "swin_opt", "swin_4bit", "rms_t5", "rms_ort"]


def test_every_graph_is_tested(graphs):
    assert sorted(graphs) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fused_graph_matches_onnxruntime(graphs, name):
    made = graphs[name]
    present = {n.op_type for n in onnx.load(str(made.path)).graph.node if n.domain == "com.microsoft"}
    assert made.ops <= present, f"{name}: the tools no longer emit {sorted(made.ops - present)}"
    problem = ort_graphs.check(load(made.path), made)
    assert not problem, f"{name}: {problem}"


@pytest.mark.parametrize("name", ["bert_4bit", "bert_mha_q", "vit_qo"])
def test_dequantize_gives_float_linear_layers(graphs, name):
    """dequantize=True: MatMulNBits and the dynamically quantized matmuls become nn.Linear; the float model is
    close to onnxruntime's quantized one and trains."""
    made = graphs[name]
    module = load(made.path, dequantize=True)
    source = Path(sys.modules[type(module).__module__].__file__).read_text()
    assert "nn.Linear(" in source
    assert not any(h in source for h in ("def matmul_nbits", "def integer_matmul", "def dynamic_quantized_matmul"))
    session = ort_graphs.session(made.path)
    feed = ort_graphs.feeds(session, 1)
    expected = session.run(None, feed)[0]
    got = module(*[torch.from_numpy(feed[i.name]) for i in session.get_inputs()])
    got = got[0] if isinstance(got, (tuple, list)) else got
    assert torch.nn.functional.cosine_similarity(got.flatten(), torch.from_numpy(expected).flatten(), dim=0) > 0.99
    got.float().square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


# One com.microsoft node at a time, for what the graphs above leave out: mask forms, causal attention, past keys
# and values, transposed batches. (op, {input: array or None}, attributes, number of outputs)
R = np.random.default_rng(5)


def _f(*shape):
    return R.standard_normal(shape).astype(np.float32)


NODE_CASES = {
    "attention_key_lengths": ("Attention", {"x": _f(2, 5, 8), "w": _f(8, 24), "b": _f(24),
                                            "mask": np.array([5, 3], np.int32)}, {"num_heads": 2}, 1),
    "attention_start_end": ("Attention", {"x": _f(2, 5, 8), "w": _f(8, 24), "b": _f(24),
                                          "mask": np.array([5, 4, 0, 1], np.int32)}, {"num_heads": 2}, 1),
    "attention_causal_raw_mask": ("Attention", {"x": _f(2, 5, 8), "w": _f(8, 24), "b": _f(24),
                                                "mask": np.array([[1] * 5, [1, 1, 1, 0, 0]], np.int32)},
                                  {"num_heads": 2, "unidirectional": 1}, 1),
    "attention_3d_mask_scale": ("Attention", {"x": _f(2, 4, 8), "w": _f(8, 24), "b": _f(24),
                                              "mask": R.integers(0, 2, (2, 4, 4)).astype(np.int32)},
                                {"num_heads": 2, "scale": 0.3, "mask_filter_value": -1000.0}, 1),
    "attention_past_present": ("Attention", {"x": _f(2, 3, 8), "w": _f(8, 24), "b": _f(24), "mask": None,
                                             "past": _f(2, 2, 2, 4, 4)}, {"num_heads": 2, "unidirectional": 1}, 2),
    "mha_padding_bias": ("MultiHeadAttention", {"q": _f(2, 5, 8), "k": _f(2, 6, 8), "v": _f(2, 6, 8), "b": _f(24),
                                                "mask": np.array([[1] * 6, [1, 1, 1, 1, 0, 0]], np.int32),
                                                "attention_bias": _f(2, 2, 5, 6)}, {"num_heads": 2}, 1),
    "mha_past": ("MultiHeadAttention", {"q": _f(2, 3, 8), "k": _f(2, 3, 8), "v": _f(2, 3, 8), "b": None,
                                        "mask": None, "attention_bias": None, "past_key": _f(2, 2, 4, 4),
                                        "past_value": _f(2, 2, 4, 4)}, {"num_heads": 2}, 3),
    "rotary_positions": ("RotaryEmbedding", {"x": _f(2, 5, 8), "position_ids": R.integers(0, 16, (2, 5)),
                                             "cos": _f(16, 2), "sin": _f(16, 2)}, {"num_heads": 2}, 1),
    "rotary_offset_interleaved_4d": ("RotaryEmbedding", {"x": _f(2, 2, 5, 4), "position_ids": np.array([3]),
                                                         "cos": _f(16, 2), "sin": _f(16, 2)}, {"interleaved": 1}, 1),
    "gqa_prompt": ("GroupQueryAttention", {"q": _f(2, 5, 16), "k": _f(2, 5, 8), "v": _f(2, 5, 8), "past_key": None,
                                           "past_value": None, "seqlens_k": np.array([4, 2], np.int32),
                                           "total_sequence_length": np.array(5, np.int32)},
                   {"num_heads": 2, "kv_num_heads": 1}, 1),
    "gqa_decode": ("GroupQueryAttention", {"q": _f(2, 1, 16), "k": _f(2, 1, 8), "v": _f(2, 1, 8),
                                           "past_key": _f(2, 1, 4, 8), "past_value": _f(2, 1, 4, 8),
                                           "seqlens_k": np.array([4, 4], np.int32),
                                           "total_sequence_length": np.array(5, np.int32)},
                   {"num_heads": 2, "kv_num_heads": 1}, 3),
    "fused_matmul_trans": ("FusedMatMul", {"a": _f(2, 3, 5, 4), "b": _f(2, 3, 6, 4)},
                           {"alpha": 0.5, "transB": 1}, 1),
    "fused_matmul_trans_batch": ("FusedMatMul", {"a": _f(4, 3, 5), "b": _f(3, 5, 6)},
                                 {"transBatchA": 1}, 1),
    "gelu": ("Gelu", {"x": _f(2, 5, 8)}, {}, 1),
    "fast_gelu_bias": ("FastGelu", {"x": _f(2, 5, 8), "bias": _f(8)}, {}, 1),
    "quick_gelu": ("QuickGelu", {"x": _f(2, 5, 8)}, {"alpha": 1.702}, 1),
    "skip_layer_norm_sum": ("SkipLayerNormalization", {"x": _f(2, 5, 8), "skip": _f(2, 5, 8), "gamma": _f(8),
                                                       "beta": _f(8), "bias": _f(8)}, {"epsilon": 1e-5}, 4),
    "skip_rms_norm": ("SkipSimplifiedLayerNormalization", {"x": _f(2, 5, 8), "skip": _f(2, 5, 8), "gamma": _f(8)},
                      {"epsilon": 1e-5}, 1),
}


def _node_model(op: str, inputs: dict, attrs: dict, outputs: int, results: list | None = None) -> onnx.ModelProto:
    """The node as a model; its outputs typed from ``results`` (onnxruntime's, from a first model without)."""
    names = [name if value is not None else "" for name, value in inputs.items()]
    feeds = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
             for n, v in inputs.items() if v is not None]
    outs = [f"y{i}" for i in range(outputs)]
    if op == "SkipLayerNormalization":  # the statistics outputs stay unused: the sum is the fourth
        outs = ["y0", "", "", "y3"]
    node = onnx.helper.make_node(op, names, outs, domain="com.microsoft", **attrs)
    shapes = [list(r.shape) for r in results] if results else [None] * len(outs)
    typed = [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, s) for o, s in zip([o for o in outs if o],
                                                                                              shapes)]
    graph = onnx.helper.make_graph([node], "g", feeds, typed)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                        onnx.helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("case", list(NODE_CASES))
def test_contrib_node_matches_onnxruntime(tmp_path, case):
    op, inputs, attrs, outputs = NODE_CASES[case]
    path = tmp_path / f"{case}.onnx"
    feed = {n: v for n, v in inputs.items() if v is not None}
    session = reference.session(_node_model(op, inputs, attrs, outputs))
    expected = session.run(None, feed)
    onnx.save(_node_model(op, inputs, attrs, outputs, expected), str(path))
    with torch.no_grad():
        got = load(path)(*[torch.from_numpy(feed[i.name]) for i in session.get_inputs()])
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-4, atol=1e-5, err_msg=case)
