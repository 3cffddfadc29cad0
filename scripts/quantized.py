"""Quantized stand-ins: onnxruntime's quantizer applied to the zoo's graphs, converted back, compared.

    python scripts/quantized.py [--models NAME ...] [--samples 2]

For each zoo stand-in (cut at its logits) and each of QDQ / QOperator x per-tensor / per-channel:
``quant_pre_process`` (BatchNorm folded into Conv, as onnxruntime's docs recommend), ``quantize_static``
calibrated on a few random samples, ``zoo.convert.load``, then the largest difference from onnxruntime on a
fresh random batch of 2 (every output), in quantization steps of the output (the scale of the graph's last DequantizeLinear).
tests/test_quantized.py uses these functions on a rotation of the cells.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import torch
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMATS = ("QDQ", "QOperator")
GRANULARITIES = ("per-tensor", "per-channel")


def runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def random_batch(path: Path, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in runtime_inputs(onnx.load(str(path), load_external_data=False)):
        shape = [batch if not d.dim_value or i == 0 else d.dim_value for i, d in enumerate(inp.type.tensor_type.shape.dim)]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def quantize(src: Path, dst: Path, fmt: str, per_channel: bool, samples: int = 2) -> Path:
    """onnxruntime's static quantization of ``src``: uint8 activations, int8 weights, random calibration."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Random(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([random_batch(src, 1, seed) for seed in range(samples)])

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice on opsets and pre-processing
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        model = onnx.load(str(src))
        if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
            # per-axis DequantizeLinear needs opset 13; the quantizer itself only moves old graphs to 11
            upgraded = Path(tmp) / "opset13.onnx"
            onnx.save(onnx.version_converter.convert_version(model, 13), str(upgraded))
            src = upgraded
        try:
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
            if len(runtime_inputs(onnx.load(str(prepared), load_external_data=False))) > 1:
                prepared = src  # the optimizer lost IR-3 initializers that were declared as inputs
        except Exception:  # graphs the optimizer cannot load: quantize them as they are
            prepared = src
        quantize_static(str(prepared), str(dst), Random(), quant_format=getattr(QuantFormat, fmt),
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def output_scale(path: Path, index: int = 0) -> float:
    """The scale of the DequantizeLinear that an output comes from (through shape-only ops)."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[model.graph.output[index].name]
    while node.op_type != "DequantizeLinear":
        node = producer[node.input[0]]
    return float(numpy_helper.to_array(inits[node.input[1]]).reshape(-1)[0])


def steps_from_onnxruntime(path: Path, module: torch.nn.Module, batch: int = 2, seed: int = 100,
                           fused: bool = True) -> float:
    """Largest |module - onnxruntime| over every output and sample, each output in its own quantization steps;
    a missing, extra or differently shaped output is an error. ``fused=False``: onnxruntime with its QDQ fusions off
    (``ORT_ENABLE_BASIC``), i.e. each QDQ op as the ONNX spec defines it.

    Both run on one thread: a float convolution sums in an order that follows the thread count (torch's 2-thread
    EfficientNet-B0 differs from its 1-thread run by 12 steps on an AVX2 CPU), and a sum that lands on the other
    side of a rounding boundary moves the next QuantizeLinear by a step, which deep graphs carry on."""
    from zoo.convert import reference

    feeds = random_batch(path, batch, seed)
    session = reference.session(path, optimization=None if fused else "basic", threads=1)
    # onnxruntime one sample at a time (the zoo graphs fix batch 1), the module on the whole batch
    runs = [session.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(batch)]
    expected = [np.concatenate(parts) for parts in zip(*runs)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            got = module(*[torch.from_numpy(v) for v in feeds.values()])
    finally:
        torch.set_num_threads(threads)
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    if len(got) != len(expected):
        raise AssertionError(f"{path}: the module gives {len(got)} outputs, onnxruntime {len(expected)}")
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, expected)):
        if tuple(g.shape) != e.shape:
            raise AssertionError(f"{path}: output {i} has shape {tuple(g.shape)}, onnxruntime's {e.shape}")
        diff = float(np.abs(g.numpy().astype(np.float64) - e.astype(np.float64)).max())
        worst = max(worst, diff / output_scale(path, i))
    return worst


def main(argv: list[str] | None = None) -> int:
    from zoo.weights.conversion import prepare_graph
    from zoo.convert import load
    from zoo.registry import load_registry
    from zoo.publish.standins import build_standin

    registry = load_registry()
    parser = argparse.ArgumentParser(prog="scripts/quantized.py", description=__doc__.split("\n\n")[0])
    standins = [n for n, e in registry.items() if e.source.standin]
    parser.add_argument("--models", nargs="+", default=standins, choices=standins, metavar="NAME",
                        help="zoo models with a stand-in graph (default: all of them)")
    parser.add_argument("--samples", type=int, default=2, help="random calibration samples")
    args = parser.parse_args(argv)
    header = ["model"] + [f"{f} {g}" for f in FORMATS for g in GRANULARITIES]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models:
            entry = registry[name]
            standin = build_standin(entry.source.standin, root / f"{name}-full.onnx", seed=0)
            cut = prepare_graph(standin, entry.logits, root / f"{name}.onnx")
            cells = []
            for fmt in FORMATS:
                for granularity in GRANULARITIES:
                    path = quantize(cut, root / f"{name}-{fmt}-{granularity}.onnx", fmt, granularity == "per-channel",
                                    args.samples)
                    start = time.perf_counter()
                    try:
                        module = load(path)
                    except Exception as exc:  # noqa: BLE001 - the table says what failed
                        cells.append(f"fails: {str(exc).splitlines()[0][-80:]}")
                        continue
                    seconds = time.perf_counter() - start
                    steps = steps_from_onnxruntime(path, module)
                    cells.append(f"{steps:.2g} step{'' if f'{steps:.2g}' == '1' else 's'} ({seconds:.1f} s)")
                    path.unlink()
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
