"""Stand-ins for the zoo's ONNX files, for tests and offline builds.

The onnx wheel ships the exact graphs of the ONNX model zoo's files as ``light_*.onnx``, with every weight
replaced by a ConstantOfShape node. Here those nodes become initializers again, filled with seeded random
values of the right shapes (He-scaled convolutions, positive batch-norm variances), which makes a graph
that behaves like a trained one numerically. Stand-in weights are never pretrained weights.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..convert.api import write_atomically

LIGHT_FILES = {
    "squeezenet": "light_squeezenet.onnx",
    "densenet121": "light_densenet121.onnx",
    "resnet50": "light_resnet50.onnx",
    "inception_v1": "light_inception_v1.onnx",
}


def light_path(graph: str) -> Path:
    """The onnx wheel's copy of a model zoo graph, e.g. ``light_path("densenet121")`` or ``"bvlc_alexnet"``."""
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    path = folder / LIGHT_FILES.get(graph, f"light_{graph}.onnx")
    if not path.is_file():
        known = sorted(p.stem[len("light_"):] for p in folder.glob("light_*.onnx"))
        raise FileNotFoundError(f"no light graph {graph!r} in the installed onnx package; known: {', '.join(known)}")
    return path


def _final_use(name: str, users: dict[str, list[tuple[onnx.NodeProto, int]]]) -> tuple[str, int, str]:
    """(op, input index, op that follows) of the first real consumer, looking through Unsqueeze/Reshape."""
    seen = 0
    while name in users and seen < 8:
        node, index = users[name][0]
        if node.op_type in ("Unsqueeze", "Reshape", "Identity") and index == 0:
            name, seen = node.output[0], seen + 1
            continue
        return node.op_type, index, node.output[0]
    return "", -1, ""


def _random_weight(shape: tuple[int, ...], op: str, index: int, rng: np.random.Generator) -> np.ndarray:
    if op in ("Conv", "Gemm", "MatMul") and index == 1:
        fan_in = int(np.prod(shape[1:])) if op == "Conv" else (shape[-1] if op == "Gemm" else shape[0])
        return rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
    if op == "BatchNormalization":
        if index in (1, 4):  # scale, variance: positive, around one
            return rng.uniform(0.5, 1.5, shape)
        return rng.normal(0.0, 0.1, shape)
    if op == "Mul":  # Caffe2's per-channel scale after a batch norm
        return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0.0, 0.05, shape)


def build_standin(graph: str | os.PathLike, out_path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a copy of a light graph (a name from LIGHT_FILES or a path) with seeded random weights."""
    source = Path(graph) if isinstance(graph, os.PathLike) or str(graph).endswith(".onnx") else light_path(graph)
    model = onnx.load(str(source))
    g = model.graph
    rng = np.random.default_rng(seed)
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            users.setdefault(name, []).append((node, i))
    inits = {t.name: t for t in g.initializer}
    kept, dropped_shapes = [], set()
    new_inits = []
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
            op, index, _ = _final_use(node.output[0], users)
            array = _random_weight(shape, op, index, rng).astype(np.float32)
            new_inits.append(numpy_helper.from_array(array, node.output[0]))
            dropped_shapes.add(node.input[0])
        else:
            kept.append(node)
    del g.node[:]
    g.node.extend(kept)
    remaining = [t for t in g.initializer if t.name not in dropped_shapes]
    del g.initializer[:]
    g.initializer.extend(remaining + new_inits)
    inputs = [i for i in g.input if i.name not in dropped_shapes]
    del g.input[:]
    g.input.extend(inputs)
    if model.ir_version < 4:  # initializers must be listed as graph inputs before IR 4
        g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new_inits)
    onnx.checker.check_model(model)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda tmp: onnx.save(model, str(tmp)))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from ..registry import load_registry

    graphs = {name: e.source.standin for name, e in load_registry().items() if e.source.standin}
    parser = argparse.ArgumentParser(prog="python -m zoo.publish.standins",
                                     description="Write the zoo's ONNX graphs with seeded random (stand-in) weights, "
                                                 "one <model>.onnx per registry entry that has a stand-in.")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--models", nargs="+", choices=list(graphs), metavar="NAME",
                        help=f"only these (default: all: {', '.join(graphs)})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: {out}: exists and is not a folder", file=sys.stderr)
        return 2
    for name in args.models or graphs:
        print(build_standin(graphs[name], out / f"{name}.onnx", seed=args.seed), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
