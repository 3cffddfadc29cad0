"""Benchmarks, side by side in one run, peers interleaved, medians reported.

    python scripts/bench.py [--repeat 5] [--batch-sizes 1 32] [--device cpu|cuda] [--json out/bench.json]

For each zoo model (built from its stand-in graph: speed does not depend on weight values):
- conversion time, zoo.convert vs onnx2torch (where installed and able to convert);
- inference latency per batch size: the generated module (eager), its flat form (structure=False), the
  same with zoo.fuse (BatchNorm folded, channels_last), that under torch.compile (compiled during warm-up,
  not timed), zoo.optimize (fuse + torch.compile with Inductor's freezing, compiled for each batch size
  before timing), torchvision's hand-written module of the same architecture, onnxruntime on the ONNX file
  (all graph optimizations, as many threads as torch, spinning off), and onnx2torch's module; the order
  rotates every repeat;
- time to load the weights from a local safetensors file (what a warm Hub cache costs);
- peak traced memory (tracemalloc) of one conversion;
- the VGG-19 stand-in's conversion (548 MB of weights) in a fresh process: time and peak RSS
  (scripts/corpus.py --big-weights measures the same way); ``--baseline old.json`` prints a previous run's
  figures beside this run's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

# OpenMP threads that spin while waiting steal the cores from the next runner, as onnxruntime's would (its
# spinning is off below); on a shared machine spinning made compiled models up to 50x slower. Read by the
# OpenMP runtime when torch loads, so it must be set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded by path, not run as a script
from corpus import measure_conversion, vgg19_standin  # noqa: E402 - scripts/corpus.py, beside this file

warnings.filterwarnings("ignore")

import zoo  # noqa: E402
from zoo.weights.conversion import prepare_graph  # noqa: E402
from zoo.convert import convert, load_converted  # noqa: E402
from zoo.modeling.model import resolved_entry  # noqa: E402
from zoo.publish.standins import build_standin  # noqa: E402

TORCHVISION = {"squeezenet1_1": "squeezenet1_1", "densenet121": "densenet121", "resnet50": "resnet50",
               "googlenet": "googlenet"}


def _median_time(fn, repeat: int, sync) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _onnx2torch():
    try:
        import onnx2torch

        return onnx2torch.convert
    except ImportError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--models", nargs="+", default=list(TORCHVISION), choices=list(TORCHVISION), metavar="NAME",
                        help=f"zoo models with a torchvision peer (default: {' '.join(TORCHVISION)})")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", type=Path, default=Path("out/bench.json"))
    parser.add_argument("--baseline", type=Path, help="a previous run's --json, printed beside this run")
    parser.add_argument("--no-big-weights", dest="big_weights", action="store_false",
                        help="skip the VGG-19 stand-in conversion (builds a 548 MB file on first use)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available to torch on this machine")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    o2t = _onnx2torch()
    machine = (f"{platform.machine()}, {torch.get_num_threads()} threads, python {platform.python_version()}, "
               f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    machine += f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    results: dict = {"machine": machine, "device": args.device, "models": {}, "load_average": [os.getloadavg()[0]]}
    import onnxruntime as ort

    if args.big_weights:
        path = vgg19_standin()
        runs = [measure_conversion(path) for _ in range(args.repeat)]
        weights_mb = path.stat().st_size / 2**20
        results["big_weights"] = {"weights_mb": weights_mb,
                                  "convert_s": statistics.median(r.seconds for r in runs),
                                  "peak_rss_mb": max(r.peak_mb for r in runs),
                                  "above_imports_mb": max(r.extra_mb for r in runs), "probed": runs[0].probed}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        tmp = Path(tmp)
        for name in args.models:
            entry = resolved_entry(name)  # what the build read from the file (global_pool, ...) filled in
            raw = build_standin(entry.source.standin, tmp / f"{name}-raw.onnx")
            onnx_path = prepare_graph(raw, entry.logits, tmp / f"{name}.onnx")
            row: dict = {}
            # as the build converts, so the weights fit the committed source
            options = dict(name=name, classifier=entry.classifier, structure=True, global_pool=entry.global_pool)
            # conversion, interleaved with the peer
            zoo_t, peer_t = [], []
            for _ in range(args.repeat):
                start = time.perf_counter()
                result = convert(onnx_path, tmp / "out", **options)
                zoo_t.append(time.perf_counter() - start)
                if o2t is not None:
                    start = time.perf_counter()
                    try:
                        o2t(str(onnx_path))
                        peer_t.append(time.perf_counter() - start)
                    except Exception as exc:  # noqa: BLE001
                        row["onnx2torch_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            row["convert_s"] = statistics.median(zoo_t)
            row["onnx2torch_convert_s"] = statistics.median(peer_t) if peer_t else None
            tracemalloc.start()
            convert(onnx_path, tmp / "out-mem", **options)
            row["convert_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            row["load_weights_s"] = _median_time(
                lambda: zoo.create_model(name, pretrained=result.weights_path), args.repeat, lambda: None)

            generated = zoo.create_model(name, pretrained=result.weights_path).eval().to(device)
            flat = convert(onnx_path, tmp / "out-flat", **{**options, "structure": False})
            candidates = {
                "zoo": generated,
                "flat": load_converted(flat.source_path.parent, name).to(device),
                "zoo+fuse": zoo.fuse(generated),
                "fuse+compile": torch.compile(zoo.fuse(generated)),
                "torchvision": getattr(torchvision.models, TORCHVISION[name])(
                    **({"aux_logits": False, "init_weights": False} if name == "googlenet" else {})).eval().to(device),
            }
            if o2t is not None and "onnx2torch_error" not in row:
                candidates["onnx2torch"] = o2t(str(onnx_path)).eval().to(device)
            session = None
            if device.type == "cpu":
                options = ort.SessionOptions()
                # Spinning worker threads would steal the cores from whichever module runs next.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                options.intra_op_num_threads = torch.get_num_threads()
                session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            for batch in args.batch_sizes:
                x = torch.randn(batch, 3, 224, 224, device=device)
                feed = {session.get_inputs()[0].name: x.cpu().numpy()} if session else None
                timings: dict[str, list[float]] = {k: [] for k in candidates}
                if session is not None:
                    timings["onnxruntime"] = []
                runnable = dict(candidates)
                try:  # compiled for this batch size, outside the timed loop
                    runnable["optimize"] = zoo.optimize(generated, x)
                    timings["optimize"] = []
                except Exception as exc:  # noqa: BLE001
                    row.setdefault("errors", {})[f"optimize@{batch}"] = f"{type(exc).__name__}: {str(exc)[:100]}"
                for k, module in list(runnable.items()):  # warm up; drop what cannot run this batch
                    try:
                        module(x)
                    except Exception as exc:  # noqa: BLE001 - e.g. onnx2torch's hard-coded batch 1
                        row.setdefault("errors", {})[f"{k}@{batch}"] = f"{type(exc).__name__}: {str(exc)[:100]}"
                        del runnable[k]
                        timings.pop(k)
                if session is not None:
                    try:
                        session.run(None, feed)
                    except Exception as exc:  # noqa: BLE001 - the graph hard-codes batch 1
                        row.setdefault("errors", {})[f"onnxruntime@{batch}"] = f"{type(exc).__name__}"
                        timings.pop("onnxruntime")
                runners = {k: (lambda m=m: m(x)) for k, m in runnable.items()}
                if "onnxruntime" in timings:
                    runners["onnxruntime"] = lambda: session.run(None, feed)
                order = list(runners)
                for r in range(args.repeat):  # rotate the order so no runner always follows the same one
                    for k in order[r % len(order):] + order[:r % len(order)]:
                        start = time.perf_counter()
                        runners[k]()
                        sync()
                        timings[k].append(time.perf_counter() - start)
                row[f"latency_ms@{batch}"] = {k: statistics.median(v) * 1000 for k, v in timings.items()}
            results["models"][name] = row
            print(f"{name}: {json.dumps(row, default=float)}", file=sys.stderr)

    results["load_average"].append(os.getloadavg()[0])
    print(f"\n{machine}; median of {args.repeat}, inference in torch.inference_mode on {args.device}; "
          f"1-minute load average {results['load_average'][0]:.1f} at the start, {results['load_average'][1]:.1f} "
          f"at the end\n")
    print(f"{'model':<14} {'convert s':>9} {'o2t s':>7} {'peak MB':>8} {'load s':>7}")
    for name, row in results["models"].items():
        o2t_s = f"{row['onnx2torch_convert_s']:.2f}" if row["onnx2torch_convert_s"] else "-"
        print(f"{name:<14} {row['convert_s']:>9.2f} {o2t_s:>7} {row['convert_peak_mb']:>8.0f} {row['load_weights_s']:>7.2f}")
    total = sum(r["convert_s"] for r in results["models"].values())
    print(f"{'all':<14} {total:>9.2f}\n")
    baseline = json.loads(args.baseline.read_text()) if args.baseline else {}
    for label, run in (("this run", results), (f"baseline {args.baseline}", baseline)):
        big = run.get("big_weights")
        if big:
            print(f"vgg19 stand-in conversion ({label}): {big['convert_s']:.2f} s, peak RSS {big['peak_rss_mb']:.0f} MB, "
                  f"{big['above_imports_mb']:.0f} MB above the imports "
                  f"({big['above_imports_mb'] / big['weights_mb']:.2f}x the weights)")
    print()
    columns = ["zoo", "flat", "zoo+fuse", "fuse+compile", "optimize", "torchvision", "onnxruntime", "onnx2torch"]
    optimized_vs_ort = []
    for batch in args.batch_sizes:
        print(f"latency ms @ batch {batch}: " + "  ".join(f"{c:>11}" for c in columns)
              + "   zoo/flat  zoo/tv  fuse/ort  compiled/ort  optimize/ort")
        for name, row in results["models"].items():
            lat = row[f"latency_ms@{batch}"]
            cells = "  ".join(f"{lat[c]:>11.1f}" if c in lat else f"{'-':>11}" for c in columns)
            ratio_tv = f"{lat['zoo'] / lat['torchvision']:.2f}" if "torchvision" in lat else "-"
            ratio_ort = f"{lat['zoo+fuse'] / lat['onnxruntime']:.2f}" if "onnxruntime" in lat else "-"
            ratio_c = f"{lat['fuse+compile'] / lat['onnxruntime']:.2f}" if "onnxruntime" in lat and \
                "fuse+compile" in lat else "-"
            ratio_flat = f"{lat['zoo'] / lat['flat']:.2f}" if "flat" in lat else "-"
            ratio_o = "-"
            if "onnxruntime" in lat and "optimize" in lat:
                optimized_vs_ort.append(lat["optimize"] / lat["onnxruntime"])
                ratio_o = f"{optimized_vs_ort[-1]:.2f}"
            print(f"  {name:<22} {cells}   {ratio_flat:>8}  {ratio_tv:>6}  {ratio_ort:>8}  {ratio_c:>12}  {ratio_o:>12}")
            old = baseline.get("models", {}).get(name, {}).get(f"latency_ms@{batch}", {})
            if old.get("onnxruntime") and old.get("optimize"):
                print(f"  {'  baseline':<22} optimize/ort {old['optimize'] / old['onnxruntime']:.2f}")
    if optimized_vs_ort:
        geomean = statistics.geometric_mean(optimized_vs_ort)
        results["optimize_vs_onnxruntime"] = {"geomean": geomean, "worst": max(optimized_vs_ort)}
        print(f"\noptimize/onnxruntime: geometric mean {geomean:.2f}, worst {max(optimized_vs_ort):.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
