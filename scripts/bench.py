"""Benchmarks, side by side in one run. For now: conversion time per zoo graph (median of --repeat runs).

    python scripts/bench.py [--repeat 5] [--json out/bench.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from zoo.convert import convert
from zoo.standins import build_standin

GRAPHS = [("squeezenet", "squeezenet1_1", "r65"), ("densenet121", "densenet121", "fc6_1"),
          ("resnet50", "resnet50", "r174"), ("inception_v1", "googlenet", "r143")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="zoo benchmarks")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"python {platform.python_version()}, torch {torch.__version__}", "convert_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: (build_standin(graph, Path(tmp) / f"{name}.onnx"), logits) for graph, name, logits in GRAPHS}
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeat):  # interleaved, so noise on the machine hits every model alike
            for name, (path, logits) in paths.items():
                start = time.perf_counter()
                convert(path, Path(tmp) / "out", name=name, outputs=[logits])
                times[name].append(time.perf_counter() - start)
    print(f"conversion time, median of {args.repeat} ({results['machine']})")
    for name, ts in times.items():
        results["convert_s"][name] = statistics.median(ts)
        print(f"  {name:<14} {statistics.median(ts):6.2f} s")
    total = sum(results["convert_s"].values())
    print(f"  {'all four':<14} {total:6.2f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
