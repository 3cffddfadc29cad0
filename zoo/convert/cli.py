"""``python -m zoo.convert IN.onnx -o OUT_DIR [--outputs ...] [--verify]``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from .errors import ConversionError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m zoo.convert",
                                               description="Convert an ONNX file into readable PyTorch source "
                                                           "and safetensors weights.")
    parser.add_argument("onnx", help="the ONNX file")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import this module first, so the op handlers it registers (register_op) are used; "
                             "repeatable")
    parser.add_argument("-o", "--out", help="output folder (required unless --layers)")
    parser.add_argument("--name", help="module name (default: from the file name)")
    parser.add_argument("--outputs", nargs="+", metavar="TENSOR", help="cut the graph at these tensors")
    parser.add_argument("--verify", action="store_true", help="compare with onnxruntime afterwards")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 3], metavar="N",
                        help="batch sizes for --verify (default: 1 3)")
    parser.add_argument("--layers", action="store_true", help="only list the graph's layers; convert nothing")
    parser.add_argument("--flat", action="store_true",
                        help="one flat class: no block classes, no restored module tree")
    parser.add_argument("--dequantize", action="store_true",
                        help="a quantized graph becomes a plain float model (approximate; drops fake quantization)")
    return parser


def run(args: argparse.Namespace) -> int:
    from . import api, verification

    for module in args.plugin:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            print(f"error: --plugin {module}: cannot import it ({exc})", file=sys.stderr)
            return 2
    try:
        if args.layers:
            rows = api.layers(args.onnx)
            print(api.LayerInfo.HEADER)
            for row in rows:
                print(row)
            missing = sorted({(r.op_type, r.opset) for r in rows if not r.supported})
            print(f"{len(rows)} nodes, {sum(r.parameters for r in rows):,} parameters"
                  + (f"; unsupported: {', '.join(f'{op} (opset {v})' for op, v in missing)}" if missing else ""))
            return 0 if not missing else 1
        if not args.out:
            print("error: -o/--out is required", file=sys.stderr)
            return 2
        start = time.perf_counter()
        result = api.convert(args.onnx, args.out, name=args.name, outputs=args.outputs, structure=not args.flat,
                              dequantize=args.dequantize)
        print(result)
        print(f"  took {time.perf_counter() - start:.2f} s")
        if args.verify:
            module = api.load(args.onnx, name=args.name, outputs=args.outputs, structure=not args.flat,
                              dequantize=args.dequantize)
            report = verification.verify(args.onnx, module, batch_sizes=args.batch_sizes)
            print(report)
            return 0 if report.passed else 1
        return 0
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except BrokenPipeError:  # `--layers | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
