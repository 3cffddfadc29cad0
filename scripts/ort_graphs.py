"""Graphs that onnxruntime's own tools made: built here from tiny random models, converted, compared.

    python scripts/ort_graphs.py [--peer onnx2torch] [--peer onnx2pytorch] [--markdown]

Tiny torchvision ViT and Swin, a tiny BERT (transformers, random weights, offline) and a T5-style RMS-norm block
are exported, fused by ``onnxruntime.transformers.optimizer`` (float32, float16) or onnxruntime's own graph
optimizer, quantized by ``quantize_dynamic`` and to 4 bits by ``MatMulNBitsQuantizer``; small LSTM and GRU
taggers go through ``quantize_dynamic`` and the graph optimizer. Each file is converted and compared with
onnxruntime (one intra-op thread) on every output at two input shapes: error at most the file's tolerance
times the largest reference magnitude. tests/test_transformer_fusions.py and tests/test_dynamic_quantized.py
use these builders.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADS = 2
BERT_RUNS = ((1, 8), (3, 6))  # (batch, tokens)
IMAGE_RUNS = ((1, 32), (2, 32))  # (batch, image size)
SEQUENCE_RUNS = ((1, 9), (3, 5))  # (batch, steps) of the recurrent taggers, 12 features a step


@dataclass(frozen=True)
class Made:
    path: Path
    made_by: str
    ops: frozenset  # the com.microsoft ops the file must hold
    tolerance: float


class Bert(torch.nn.Module):
    def __init__(self):
        import transformers

        super().__init__()
        config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=HEADS,
                                         intermediate_size=64, max_position_embeddings=16, attn_implementation="eager")
        self.bert = transformers.BertModel(config).eval()

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state, out.pooler_output


class RMSBlock(torch.nn.Module):
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


class Tagger(torch.nn.Module):
    """A per-step tagger: a recurrent layer, then a linear head on every step."""

    def __init__(self, kind: str, bidirectional: bool):
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(12, 16, batch_first=True, bidirectional=bidirectional)
        self.head = torch.nn.Linear(32 if bidirectional else 16, 5)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def export(model, args, path: Path, names: list[str], outputs: list[str], dynamic: dict, opset: int = 17) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), opset_version=opset, dynamo=False, input_names=names,
                          output_names=outputs, dynamic_axes=dynamic)
    return path


def optimize(path: Path, out: Path, model_type: str, hidden: int, approximate: bool = False, fp16: bool = False):
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


def session_optimized(path: Path, out: Path) -> Path:
    """What onnxruntime's own graph optimizer saves (FusedMatMul, FusedGemm, QuickGelu, DynamicQuantizeMatMul)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return out


def quantized(path: Path, out: Path, per_channel: bool = False) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    typed = out.with_name(out.stem + "_typed.onnx")  # the quantizer needs every tensor's type
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=True), str(typed))
    quantize_dynamic(str(typed), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
    return out


def four_bit(path: Path, out: Path) -> Path:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), block_size=16, is_symmetric=False)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out))
    return out


def recurrent_graphs(root: Path) -> dict[str, Made]:
    """LSTM and GRU taggers through quantize_dynamic (DynamicQuantizeLSTM, MatMulInteger), then onnxruntime's
    graph optimizer (DynamicQuantizeMatMul); the float model each came from is kept beside it."""
    made = {}
    for kind, bidirectional in (("LSTM", True), ("LSTM", False), ("GRU", True)):
        torch.manual_seed(0)
        name = f"{kind.lower()}{'_bi' if bidirectional else ''}"
        tagger = Tagger(kind, bidirectional).eval()
        dynamic = {"x": {0: "batch", 1: "steps"}, "y": {0: "batch", 1: "steps"}}
        source = export(tagger, (torch.randn(1, 9, 12),), root / f"{name}.onnx", ["x"], ["y"], dynamic)
        lstm = {"DynamicQuantizeLSTM"} if kind == "LSTM" else set()
        for per_channel in (False, True):
            cell = f"{name}_{'pc' if per_channel else 'pt'}"
            q = quantized(source, root / f"{cell}.onnx", per_channel)
            made[cell] = Made(q, f"torch {kind} -> quantize_dynamic", frozenset(lstm), 0.0)
            made[cell + "_opt"] = Made(session_optimized(q, root / f"{cell}_opt.onnx"),
                                       f"torch {kind} -> quantize_dynamic -> onnxruntime optimizer",
                                       frozenset(lstm | {"DynamicQuantizeMatMul"}), 0.0)
    return made


def transformer_graphs(root: Path) -> dict[str, Made]:
    import torchvision

    torch.manual_seed(0)
    bert = export(Bert(), (torch.randint(0, 50, (1, 8)), torch.ones(1, 8, dtype=torch.long),
                           torch.zeros(1, 8, dtype=torch.long)), root / "bert.onnx",
                  ["input_ids", "attention_mask", "token_type_ids"], ["last", "pooled"],
                  {k: {0: "batch", 1: "tokens"} for k in ("input_ids", "attention_mask", "token_type_ids", "last")}
                  | {"pooled": {0: "batch"}})
    image = {"x": {0: "batch"}, "y": {0: "batch"}}
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=HEADS,
                                               hidden_dim=32, mlp_dim=64, num_classes=5).eval()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.2)  # torchvision starts the head at zero
    vit14 = export(vit, (torch.randn(1, 3, 32, 32),), root / "vit14.onnx", ["x"], ["y"], image, opset=14)
    vit = export(vit, (torch.randn(1, 3, 32, 32),), root / "vit.onnx", ["x"], ["y"], image)
    swin = torchvision.models.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[1, 1], num_heads=[HEADS, HEADS],
                                              window_size=[4, 4], num_classes=5).eval()
    swin = export(swin, (torch.randn(1, 3, 32, 32),), root / "swin.onnx", ["x"], ["y"], image)
    rms = export(RMSBlock().eval(), (torch.randn(2, 5, 16),), root / "rms.onnx", ["x"], ["y"],
                 {"x": {0: "batch", 1: "tokens"}})

    def made(path, by, ops, tolerance=1e-4):
        return Made(path, by, frozenset(ops), tolerance)

    opt = "transformer optimizer"
    bert_opt = optimize(bert, root / "bert_opt.onnx", "bert", 32)
    bert_mha = optimize(bert, root / "bert_mha.onnx", "bert", 32, approximate=True)
    vit_opt = optimize(vit, root / "vit_opt.onnx", "vit", 32)
    swin_opt = optimize(swin, root / "swin_opt.onnx", "swin", 16)
    return {
        "bert_opt": made(bert_opt, f"BERT -> {opt}", {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization",
                                                      "BiasGelu"}),
        "bert_mha": made(bert_mha, f"BERT -> {opt} (GELU approximation, MultiHeadAttention)",
                         {"MultiHeadAttention", "FastGelu"}),
        "bert_fp16": made(optimize(bert, root / "bert_fp16.onnx", "bert", 32, fp16=True), f"BERT -> {opt}, float16",
                          {"Attention"}, 1e-2),
        "bert_ort": made(session_optimized(bert, root / "bert_ort.onnx"), "BERT -> onnxruntime optimizer",
                         {"FusedMatMul", "FusedGemm"}),
        "bert_q": made(quantized(bert_opt, root / "bert_q.onnx"), f"BERT -> {opt} -> quantize_dynamic",
                       {"QAttention", "QEmbedLayerNormalization"}),
        "bert_mha_q": made(session_optimized(quantized(bert_mha, root / "bert_mha_q.onnx"), root / "bert_mha_qo.onnx"),
                           f"BERT -> {opt} (MultiHeadAttention) -> quantize_dynamic -> onnxruntime optimizer",
                           {"MatMulIntegerToFloat", "DynamicQuantizeMatMul"}),
        "bert_4bit": made(four_bit(bert_opt, root / "bert_4bit.onnx"), f"BERT -> {opt} -> 4-bit MatMulNBits",
                          {"MatMulNBits"}),
        "vit_opt": made(vit_opt, f"torchvision ViT -> {opt}", {"SkipLayerNormalization", "BiasGelu"}),
        # before opset 17 the LayerNormalization the optimizer fuses is onnxruntime's own, in the ai.onnx domain
        "vit14_opt": made(optimize(vit14, root / "vit14_opt.onnx", "vit", 32), f"torchvision ViT, opset 14 -> {opt}",
                          {"SkipLayerNormalization"}),
        "vit_fastgelu": made(optimize(vit, root / "vit_fast.onnx", "vit", 32, approximate=True),
                             f"torchvision ViT -> {opt} (GELU approximation)", {"FastGelu"}),
        "vit_qo": made(session_optimized(quantized(vit_opt, root / "vit_q.onnx"), root / "vit_qo.onnx"),
                       f"torchvision ViT -> {opt} -> quantize_dynamic -> onnxruntime optimizer",
                       {"DynamicQuantizeMatMul"}),
        "vit_4bit": made(four_bit(vit_opt, root / "vit_4bit.onnx"), f"torchvision ViT -> {opt} -> 4-bit MatMulNBits",
                         {"MatMulNBits"}),
        "swin_opt": made(swin_opt, f"torchvision Swin -> {opt}", {"BiasGelu"}),
        "swin_4bit": made(four_bit(swin_opt, root / "swin_4bit.onnx"),
                          f"torchvision Swin -> {opt} -> 4-bit MatMulNBits", {"MatMulNBits"}),
        "rms_t5": made(optimize(rms, root / "rms_t5.onnx", "t5", 16), f"RMS-norm block -> {opt} (t5)",
                       {"SkipSimplifiedLayerNormalization"}),
        "rms_ort": made(session_optimized(rms, root / "rms_ort.onnx"), "RMS-norm block -> onnxruntime optimizer",
                        {"QuickGelu"}),
    }


def session(path: Path) -> ort.InferenceSession:
    """One intra-op thread: onnxruntime's quantized LSTM quantizes its hidden state per batch chunk, and the
    chunks follow the thread count (one thread, one chunk: what the generated code does)."""
    from zoo.convert import reference

    return reference.session(path, threads=1)


def feeds(sess: ort.InferenceSession, run: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(run)
    names = [i.name for i in sess.get_inputs()]
    if "input_ids" in names:
        batch, tokens = BERT_RUNS[run]
        mask = np.ones((batch, tokens), np.int64)
        mask[0, -2:] = 0  # padding in the first sequence: the attention masks matter
        return {"input_ids": rng.integers(0, 50, (batch, tokens)), "attention_mask": mask,
                "token_type_ids": rng.integers(0, 2, (batch, tokens))}
    rank = len(sess.get_inputs()[0].shape)
    if rank == 3 and sess.get_inputs()[0].shape[-1] == 12:
        batch, steps = SEQUENCE_RUNS[run]
        return {names[0]: rng.standard_normal((batch, steps, 12)).astype(np.float32)}
    if rank == 3:
        return {names[0]: rng.standard_normal((run + 1, 5 + run, 16)).astype(np.float32)}
    batch, size = IMAGE_RUNS[run]
    return {names[0]: rng.standard_normal((batch, 3, size, size)).astype(np.float32)}


def check(module: torch.nn.Module, made: Made) -> str:
    """'' when every output matches onnxruntime at both shapes within the tolerance, else why not."""
    sess = session(made.path)
    module.eval()
    for run in range(2):
        feed = feeds(sess, run)
        expected = sess.run(None, feed)
        with torch.no_grad():
            got = module(*[torch.from_numpy(feed[i.name]) for i in sess.get_inputs()])
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        if len(got) != len(expected):
            return f"{len(got)} outputs, onnxruntime gives {len(expected)}"
        for g, e in zip(got, expected):
            if tuple(g.shape) != e.shape:
                return f"run {run}: shape {tuple(g.shape)} != {e.shape}"
            error = float(np.abs(g.detach().float().numpy().astype(np.float64) - e).max())
            if error > made.tolerance * max(float(np.abs(e).max()), 1e-2):
                return f"run {run}: error {error:.2g}"
    return ""


def _peer(name: str, path: Path) -> torch.nn.Module:
    if name == "onnx2torch":
        from onnx2torch import convert

        return convert(onnx.load(str(path)))
    from onnx2pytorch import ConvertModel

    return ConvertModel(onnx.load(str(path)))


def _outcome(convert, made: Made) -> str:
    try:
        problem = check(convert(made.path), made)
    except Exception as exc:  # a converter's failure is a result here, not a crash
        refused = re.search(r"op(?:eration)?_type='?(\w+)", str(exc))  # the peers' "not implemented" messages
        if refused:
            return f"{refused.group(1)} not implemented"
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0][:80] if text else ''}"
    return problem or "matches"


def main(argv: list[str] | None = None) -> int:
    from zoo.convert import load

    parser = argparse.ArgumentParser(prog="scripts/ort_graphs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", action="append", default=[], choices=["onnx2torch", "onnx2pytorch"])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        graphs = recurrent_graphs(root) | transformer_graphs(root)
        rows = []
        for name, made in graphs.items():
            ops = sorted({n.op_type for n in onnx.load(str(made.path)).graph.node if n.domain == "com.microsoft"})
            results = [_outcome(load, made)] + [_outcome(lambda p, n=peer: _peer(n, p), made) for peer in args.peer]
            rows.append((name, made, ops, results))
            if not args.markdown:
                print(f"{name:14} {' | '.join(results)}", flush=True)
    if args.markdown:
        print("| file | made by | com.microsoft ops | zoo | " + " | ".join(args.peer) + " |")
        print("| --- | --- | --- | --- |" + " --- |" * len(args.peer))
        for name, made, ops, results in rows:
            print(f"| {name} | {made.made_by} | {', '.join(ops) or '-'} | " + " | ".join(results) + " |")
    zoo_passed = sum(r[3][0] == "matches" for r in rows)
    print(f"\nzoo: {zoo_passed} of {len(rows)} match"
          + "".join(f"; {p}: {sum(r[3][i + 1] == 'matches' for r in rows)}" for i, p in enumerate(args.peer)))
    return 0 if zoo_passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
