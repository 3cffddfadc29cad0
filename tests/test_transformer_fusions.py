"""Graphs that onnxruntime's tools made of transformer encoders (issue 24): tiny torchvision ViT and Swin and a
tiny BERT (transformers, random weights, built offline) exported, then fused by
``onnxruntime.transformers.optimizer`` (model_type vit / swin / bert; float32, float16), by onnxruntime's own
graph optimizer, quantized by ``quantize_dynamic`` and to 4 bits by ``MatMulNBitsQuantizer``. Each converted
graph is compared with onnxruntime on every output at two shapes, and must carry the com.microsoft ops it is
meant to test (a fusion that stops happening fails here instead of passing untested)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from zoo.convert import load

from .conftest import randomize_

HEADS = 2
BERT_RUNS = ((1, 8), (3, 6))  # (batch, tokens)
IMAGE_RUNS = ((1, 32), (2, 32))  # (batch, image size)


class _Bert(torch.nn.Module):
    def __init__(self):
        super().__init__()
        config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=HEADS,
                                         intermediate_size=64, max_position_embeddings=16, attn_implementation="eager")
        self.bert = transformers.BertModel(config).eval()

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state, out.pooler_output


class _RMSBlock(torch.nn.Module):
    """A T5-style block: RMS norm, a sigmoid-gated (QuickGelu) linear, a residual, RMS norm again."""

    def __init__(self):
        super().__init__()
        self.w1, self.w2 = (torch.nn.Parameter(torch.rand(16) + 0.5) for _ in range(2))
        self.fc = torch.nn.Linear(16, 16)

    @staticmethod
    def norm(x, w):
        return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def forward(self, x):
        h = self.fc(self.norm(x, self.w1))
        return self.norm(x + h * torch.sigmoid(1.702 * h), self.w2)


def _export(model, args, path: Path, names: list[str], outputs: list[str], dynamic: dict, opset: int = 17) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), opset_version=opset, dynamo=False, input_names=names,
                          output_names=outputs, dynamic_axes=dynamic)
    return path


def _optimize(path: Path, out: Path, model_type: str, hidden: int, approximate: bool = False, fp16: bool = False):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    if approximate:  # FastGelu and MultiHeadAttention instead of BiasGelu and Attention
        options.enable_gelu_approximation = True
        options.use_multi_head_attention = True
    model = optimize_model(str(path), model_type=model_type, num_heads=HEADS, hidden_size=hidden,
                           optimization_options=options)
    if fp16:
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out))
    return out


def _session_optimized(path: Path, out: Path) -> Path:
    """What onnxruntime's own graph optimizer saves (FusedMatMul, FusedGemm, QuickGelu, DynamicQuantizeMatMul)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return out


def _quantized(path: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    typed = out.with_name(out.stem + "_typed.onnx")  # the quantizer needs every tensor's type
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=True), str(typed))
    quantize_dynamic(str(typed), str(out), weight_type=QuantType.QInt8)
    return out


def _four_bit(path: Path, out: Path) -> Path:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), block_size=16, is_symmetric=False)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out))
    return out


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """name -> (path, com.microsoft ops it must hold, tolerance relative to the largest output value)."""
    import torchvision

    root = tmp_path_factory.mktemp("fusions")
    torch.manual_seed(0)
    bert = _export(_Bert(), (torch.randint(0, 50, (1, 8)), torch.ones(1, 8, dtype=torch.long),
                             torch.zeros(1, 8, dtype=torch.long)), root / "bert.onnx",
                   ["input_ids", "attention_mask", "token_type_ids"], ["last", "pooled"],
                   {k: {0: "batch", 1: "tokens"} for k in ("input_ids", "attention_mask", "token_type_ids", "last")}
                   | {"pooled": {0: "batch"}})
    image = {"x": {0: "batch"}, "y": {0: "batch"}}
    vit = randomize_(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=HEADS,
                                                          hidden_dim=32, mlp_dim=64, num_classes=5)).eval()
    vit14 = _export(vit, (torch.randn(1, 3, 32, 32),), root / "vit14.onnx", ["x"], ["y"], image, opset=14)
    vit = _export(vit, (torch.randn(1, 3, 32, 32),), root / "vit.onnx", ["x"], ["y"], image)
    swin = randomize_(torchvision.models.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[1, 1],
                                                         num_heads=[HEADS, HEADS], window_size=[4, 4],
                                                         num_classes=5)).eval()
    swin = _export(swin, (torch.randn(1, 3, 32, 32),), root / "swin.onnx", ["x"], ["y"], image)
    rms = _export(_RMSBlock().eval(), (torch.randn(2, 5, 16),), root / "rms.onnx", ["x"], ["y"],
                  {"x": {0: "batch", 1: "tokens"}})

    made = {}
    bert_opt = _optimize(bert, root / "bert_opt.onnx", "bert", 32)
    bert_mha = _optimize(bert, root / "bert_mha.onnx", "bert", 32, approximate=True)
    made["bert_opt"] = (bert_opt, {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu"}, 1e-4)
    made["bert_mha"] = (bert_mha, {"MultiHeadAttention", "FastGelu"}, 1e-4)
    made["bert_fp16"] = (_optimize(bert, root / "bert_fp16.onnx", "bert", 32, fp16=True), {"Attention"}, 1e-2)
    made["bert_ort"] = (_session_optimized(bert, root / "bert_ort.onnx"), {"FusedMatMul", "FusedGemm"}, 1e-4)
    made["bert_q"] = (_quantized(bert_opt, root / "bert_q.onnx"), {"QAttention", "QEmbedLayerNormalization"}, 1e-4)
    made["bert_mha_q"] = (_session_optimized(_quantized(bert_mha, root / "bert_mha_q.onnx"), root / "bert_mha_qo.onnx"),
                          {"MatMulIntegerToFloat", "DynamicQuantizeMatMul"}, 1e-4)
    made["bert_4bit"] = (_four_bit(bert_opt, root / "bert_4bit.onnx"), {"MatMulNBits"}, 1e-4)
    vit_opt = _optimize(vit, root / "vit_opt.onnx", "vit", 32)
    made["vit_opt"] = (vit_opt, {"SkipLayerNormalization", "BiasGelu"}, 1e-4)
    # before opset 17 the LayerNormalization the optimizer fuses is onnxruntime's own, in the ai.onnx domain
    made["vit14_opt"] = (_optimize(vit14, root / "vit14_opt.onnx", "vit", 32), {"SkipLayerNormalization"}, 1e-4)
    made["vit_fastgelu"] = (_optimize(vit, root / "vit_fast.onnx", "vit", 32, approximate=True), {"FastGelu"}, 1e-4)
    made["vit_qo"] = (_session_optimized(_quantized(vit_opt, root / "vit_q.onnx"), root / "vit_qo.onnx"),
                      {"DynamicQuantizeMatMul"}, 1e-4)
    made["vit_4bit"] = (_four_bit(vit_opt, root / "vit_4bit.onnx"), {"MatMulNBits"}, 1e-4)
    swin_opt = _optimize(swin, root / "swin_opt.onnx", "swin", 16)
    made["swin_opt"] = (swin_opt, {"BiasGelu"}, 1e-4)
    made["swin_4bit"] = (_four_bit(swin_opt, root / "swin_4bit.onnx"), {"MatMulNBits"}, 1e-4)
    made["rms_t5"] = (_optimize(rms, root / "rms_t5.onnx", "t5", 16), {"SkipSimplifiedLayerNormalization"}, 1e-4)
    made["rms_ort"] = (_session_optimized(rms, root / "rms_ort.onnx"), {"QuickGelu"}, 1e-4)
    return made


def _feeds(session: ort.InferenceSession, run: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(run)
    names = [i.name for i in session.get_inputs()]
    if "input_ids" in names:
        batch, tokens = BERT_RUNS[run]
        mask = np.ones((batch, tokens), np.int64)
        mask[0, -2:] = 0  # padding in the first sequence: the attention masks matter
        return {"input_ids": rng.integers(0, 50, (batch, tokens)), "attention_mask": mask,
                "token_type_ids": rng.integers(0, 2, (batch, tokens))}
    shape = session.get_inputs()[0].shape
    if len(shape) == 3:
        return {names[0]: rng.standard_normal((run + 1, 5 + run, 16)).astype(np.float32)}
    batch, size = IMAGE_RUNS[run]
    return {names[0]: rng.standard_normal((batch, 3, size, size)).astype(np.float32)}


def _compare(path: Path, module: torch.nn.Module, tolerance: float) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for run in range(2):
        feed = _feeds(session, run)
        expected = session.run(None, feed)
        with torch.no_grad():
            got = module(*[torch.from_numpy(feed[i.name]) for i in session.get_inputs()])
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert tuple(g.shape) == e.shape
            scale = max(float(np.abs(e).max()), 1e-2)
            error = float(np.abs(g.float().numpy() - e).max()) / scale
            assert error <= tolerance, f"{path.name} run {run}: relative error {error:.2g}"


NAMES = ["bert_opt", "bert_mha", "bert_fp16", "bert_ort", "bert_q", "bert_mha_q", "bert_4bit", "vit_opt",
         "vit14_opt", "vit_fastgelu", "vit_qo", "vit_4bit", "swin_opt", "swin_4bit", "rms_t5", "rms_ort"]


@pytest.mark.parametrize("name", NAMES)
def test_fused_graph_matches_onnxruntime(graphs, name):
    path, ops, tolerance = graphs[name]
    present = {n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft"}
    assert ops <= present, f"{name}: the tools no longer emit {sorted(ops - present)}"
    _compare(path, load(path), tolerance)


@pytest.mark.parametrize("name", ["bert_4bit", "bert_mha_q", "vit_qo"])
def test_dequantize_gives_float_linear_layers(graphs, name):
    """dequantize=True: MatMulNBits and the dynamically quantized matmuls become nn.Linear; the float model is
    close to onnxruntime's quantized one and trains."""
    path, _, _ = graphs[name]
    module = load(path, dequantize=True)
    source = Path(sys.modules[type(module).__module__].__file__).read_text()
    assert "nn.Linear(" in source
    assert not any(h in source for h in ("def matmul_nbits", "def integer_matmul", "def dynamic_quantized_matmul"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = _feeds(session, 1)
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
    session = ort.InferenceSession(_node_model(op, inputs, attrs, outputs).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feed)
    onnx.save(_node_model(op, inputs, attrs, outputs, expected), str(path))
    with torch.no_grad():
        got = load(path)(*[torch.from_numpy(feed[i.name]) for i in session.get_inputs()])
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-4, atol=1e-5, err_msg=case)
