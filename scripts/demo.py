"""The offline end-to-end demo (README command 1).

Rebuilds the ONNX model zoo's four graphs from the onnx wheel with seeded random weights (stand-ins:
never pretrained), converts each into PyTorch source and safetensors weights, and verifies them against
onnxruntime at batch 1 and 5.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from zoo.convert import convert, load, verify
from zoo.standins import build_standin

# (light graph, zoo name, logits tensor)
GRAPHS = [
    ("squeezenet", "squeezenet1_1", "r65"),
    ("densenet121", "densenet121", "fc6_1"),
    ("resnet50", "resnet50", "r174"),
    ("inception_v1", "googlenet", "r143"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo", help="working folder (default: out/demo)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    failures = 0
    rows = []
    for graph, name, logits in tqdm(GRAPHS, desc="converting", unit="model"):
        onnx_path = build_standin(graph, out / "onnx" / f"{name}.onnx", seed=0)
        start = time.perf_counter()
        result = convert(onnx_path, out / "models", name=name, outputs=[logits])
        seconds = time.perf_counter() - start
        report = verify(onnx_path, load(onnx_path, name=name, outputs=[logits]), batch_sizes=(1, 5))
        failures += not report.passed
        rows.append((name, result, seconds, report))
    print("\nzoo.convert on the ONNX model zoo's four graphs (stand-in weights, not pretrained):")
    print(f"{'model':<14} {'params':>12} {'convert s':>10} {'worst rel err':>14}  result")
    for name, result, seconds, report in rows:
        print(f"{name:<14} {result.num_parameters:>12,} {seconds:>10.2f} {report.worst:>14.2e}  "
              f"{'OK' if report.passed else 'FAILED'}")
    print(f"\nsources and weights in {out / 'models'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
