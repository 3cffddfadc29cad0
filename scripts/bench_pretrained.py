"""How long ``pretrained=True`` takes without published Hub weights: the first load (download the pinned
ONNX file from a loopback mirror, convert, cache) and a warm load (read the cache), each in a fresh process.

    python scripts/bench_pretrained.py [--models squeezenet1_1 resnet50 ...] [--repeat 3]

Stand-in files (the real graphs with seeded random weights, same sizes as upstream within a few KB) are
served by a loopback HTTP server; a private registry (ZOO_REGISTRY) pins their sha256.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMED = ("import time, zoo; t = time.perf_counter(); zoo.create_model({name!r}, pretrained=True); "
         "print(time.perf_counter() - t)")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _timed_load(name: str, env: dict) -> float:
    done = subprocess.run([sys.executable, "-c", TIMED.format(name=name)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return float(done.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    from zoo.weights.download import file_sha256
    from zoo.registry import DEFAULT_REGISTRY, load_registry
    from zoo.publish.standins import build_standin

    parser = argparse.ArgumentParser(prog="scripts/bench_pretrained.py", description=__doc__.split("\n\n")[0])
    standins = [name for name, e in load_registry(DEFAULT_REGISTRY).items() if e.source.standin]
    parser.add_argument("--models", nargs="+", default=["squeezenet1_1", "densenet121", "resnet50", "googlenet"],
                        choices=standins, metavar="NAME", help="zoo models with a stand-in graph")
    parser.add_argument("--repeat", type=int, default=3, help="warm loads per model (median reported)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    registry = load_registry(DEFAULT_REGISTRY)
    with tempfile.TemporaryDirectory(prefix="zoo-bench-pretrained-") as tmp:
        tmp = Path(tmp)
        files = tmp / "mirror"
        data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
        data["models"] = {name: data["models"][name] for name in args.models}
        for name, body in data["models"].items():
            path = build_standin(registry[name].source.standin, files / registry[name].source.file)
            body["source"].update(sha256=file_sha256(path), size=path.stat().st_size, urls=[])
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(files)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        mirror = f"http://127.0.0.1:{server.server_address[1]}"
        for body in data["models"].values():
            body["source"]["urls"] = [f"{mirror}/{body['source']['file']}"]
        (tmp / "zoo").mkdir()
        (tmp / "zoo" / "registry.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        shutil.copytree(ROOT / "zoo" / "models", tmp / "zoo" / "models",
                        ignore=shutil.ignore_patterns("published.json", "__pycache__"))
        env = {**os.environ, "ZOO_REGISTRY": str(tmp / "zoo" / "registry.yaml"), "ZOO_CACHE": str(tmp / "cache"),
               "ZOO_PINS": str(tmp / "none.json")}
        rows = []
        print(f"{'model':<14} {'ONNX MB':>8} {'first load s':>13} {'warm load s':>12}")
        for name in args.models:
            size = registry[name].source.size
            first = _timed_load(name, env)
            warm = statistics.median(_timed_load(name, env) for _ in range(args.repeat))
            rows.append({"model": name, "onnx_mb": size / 1e6, "first_s": first, "warm_s": warm})
            print(f"{name:<14} {size / 1e6:>8.1f} {first:>13.2f} {warm:>12.2f}")
        server.shutdown()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
