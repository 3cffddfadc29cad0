"""Ship a model: ``zoo export`` / :func:`zoo.export` to ONNX, a ``torch.export`` program (.pt2) or TorchScript.

Each artifact is loaded back with its own runtime (onnxruntime, ``torch.export.load``, ``torch.jit.load``) and
compared with the model on random inputs at two batch sizes (one, twice, for a fixed batch) before it is
renamed into place; a mismatch is an :class:`ExportError` and leaves nothing behind. ``config.json`` beside it
says how to feed the artifact (input shape, preprocessing) and read its output (labels).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..convert.api import write_atomically
from ..modeling.factory import create_model, model_config
from ..modeling.preprocess import labels
from ..weights.pretrained import WeightsError, read_config

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
RUNTIMES = {"onnx": "onnxruntime", "pt2": "torch.export.load", "torchscript": "torch.jit.load"}
INPUT = "input"


class ExportError(RuntimeError):
    """The artifact could not be written, or does not compute what the model computes."""


def _format_of(path: Path, format: str | None, opset: int | None = None) -> str:
    if opset is not None and (format or path.suffix) not in ("onnx", FORMATS["onnx"]):
        raise ValueError(f"opset is for format='onnx', not {format or path.suffix!r}")
    if format is None:
        found = [f for f, suffix in FORMATS.items() if path.suffix == suffix]
        if not found:
            raise ValueError(f"{path}: cannot tell the format from the suffix; pass format= one of "
                             f"{', '.join(FORMATS)} (suffixes {', '.join(FORMATS.values())})")
        return found[0]
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    return format


def random_inputs(model: nn.Module, batch: int, seed: int) -> torch.Tensor:
    """Inputs spread over what preprocessing can produce: each channel uniform in [0, value_range], normalized."""
    cfg = model.pretrained_cfg
    pre = cfg["preprocessing"]
    channels = cfg["input_size"][0]
    mean = torch.tensor((list(pre["mean"]) * channels)[:channels]).view(1, -1, 1, 1)
    std = torch.tensor((list(pre["std"]) * channels)[:channels]).view(1, -1, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    raw = torch.rand(batch, *cfg["input_size"], generator=generator) * pre["value_range"]
    return (raw - mean) / std


def _outputs(value) -> list[np.ndarray]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in values]


def _write(model: nn.Module, path: Path, format: str, example: torch.Tensor, dynamic_batch: bool,
           opset: int | None, n_outputs: int) -> None:
    batch = {0: torch.export.Dim("batch", min=1, max=65536)} if dynamic_batch else None
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream; asked for anyway
            torch.jit.save(torch.jit.script(model), str(path))  # scripted: any batch size
    elif format == "pt2":
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch[0]},) if batch else None)
        with open(path, "wb") as f:  # a file object: torch.export.save insists on a .pt2 name otherwise
            torch.export.save(program, f)
    else:
        names = ["output"] if n_outputs == 1 else [f"output{i}" for i in range(n_outputs)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's progress chatter
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=names,
                                        dynamic_shapes=({0: batch[0]},) if batch else None, opset_version=opset,
                                        verbose=False)
        program.save(str(path))


def _runner(path: Path, format: str):
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {INPUT: x.numpy()})
    if format == "pt2":
        with open(path, "rb") as f:
            loaded = torch.export.load(f).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path))
    return lambda x: _outputs(loaded(x))


def _verify(model: nn.Module, artifact: Path, path: Path, format: str, batches: tuple[int, ...], rtol: float
            ) -> float:
    """Largest difference between the model and ``artifact`` (written for ``path``, the name errors give)."""
    try:
        run = _runner(artifact, format)
    except Exception as exc:
        raise ExportError(f"{path}: {RUNTIMES[format]} cannot load the exported {format} "
                          f"({type(exc).__name__}: {exc})") from exc
    worst = 0.0
    for seed, batch in enumerate(batches):
        x = random_inputs(model, batch, seed)
        with torch.no_grad():
            expected = _outputs(model(x))
        try:
            got = run(x)
        except Exception as exc:
            raise ExportError(f"{path}: {RUNTIMES[format]} fails on a batch of {batch} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        if [e.shape for e in expected] != [np.shape(g) for g in got]:
            raise ExportError(f"{path}: {RUNTIMES[format]} gives outputs of shapes {[np.shape(g) for g in got]} "
                              f"for a batch of {batch}; the model gives {[e.shape for e in expected]}")
        for i, (e, g) in enumerate(zip(expected, got)):
            error = float(np.max(np.abs(e - g))) if e.size else 0.0
            scale = float(np.max(np.abs(e))) if e.size else 0.0
            if not error <= rtol * max(scale, 1.0):
                raise ExportError(f"{path}: output {i} differs from the model's by up to {error:.3g} (outputs up to "
                                  f"{scale:.3g}; allowed {rtol:g} of that) on a batch of {batch} under "
                                  f"{RUNTIMES[format]}")
            worst = max(worst, error)
    return worst


def deployment_config(model: nn.Module, path: Path, format: str, dynamic: bool, n_outputs: int,
                      verified: dict[str, Any]) -> dict[str, Any]:
    """config.json: what a deployment needs beside the artifact (model_config, labels spelled out, I/O)."""
    cfg = model_config(model)
    cfg["labels"] = labels(model) if model.num_classes else None
    cfg.update(format=format, file=path.name,
               input={"name": INPUT, "shape": ["batch" if dynamic else 1, *cfg["input_size"]], "dtype": "float32"},
               outputs=["output"] if n_outputs == 1 else [f"output{i}" for i in range(n_outputs)],
               verified=verified)
    if model.pretrained_cfg.get("model_args"):
        cfg["model_args"] = model.pretrained_cfg["model_args"]
    return cfg


def export(model: nn.Module, path: str | Path, format: str | None = None, *, dynamic_batch: bool = False,
           opset: int | None = None, rtol: float = 1e-4) -> dict[str, Any]:
    """Export a zoo model (fine-tuned head, backbone options and all) to ``path`` and write ``config.json``
    beside it; return that config.

    format: "onnx" (onnxruntime, TensorRT), "pt2" (a ``torch.export`` program: ExecuTorch, AOTInductor) or
        "torchscript" (LibTorch); default: from the suffix (.onnx, .pt2, .pt).
    dynamic_batch: any batch size (TorchScript always has it); else the artifact takes a batch of one.
    opset: the ONNX opset (default: the exporter's). rtol: largest allowed difference from the model's outputs,
        relative to their largest magnitude (at least 1).
    """
    path = Path(path)
    format = _format_of(path, format, opset)
    if not isinstance(getattr(model, "pretrained_cfg", None), dict):
        raise ValueError(f"expected a zoo model (zoo.create_model), got {type(model).__name__}")
    dynamic = dynamic_batch or format == "torchscript"
    batches = (2, 3) if dynamic else (1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n_outputs = len(_outputs(model(random_inputs(model, batches[0], 0))))
        verified: dict[str, Any] = {"runtime": RUNTIMES[format], "batch_sizes": list(batches)}

        def write(tmp: Path) -> None:
            try:
                _write(model, tmp, format, random_inputs(model, batches[0], 0), dynamic, opset, n_outputs)
            except Exception as exc:
                raise ExportError(f"{path}: cannot export {model.pretrained_cfg['name']} to {format} "
                                  f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''})"
                                  ) from exc
            verified["max_abs_error"] = _verify(model, tmp, path, format, batches, rtol)

        write_atomically(path, write)
    finally:
        model.train(training)
    config = deployment_config(model, path, format, dynamic, n_outputs, verified)
    write_atomically(path.parent / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return config


# ---- zoo export ------------------------------------------------------------------------------------------------

def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a model to ONNX, torch.export (.pt2) or TorchScript, checked",
                              description=__doc__.splitlines()[0])
    p.add_argument("model", metavar="NAME|FOLDER",
                   help="a zoo model (pretrained weights, or --weights) or a folder of fine-tuned weights")
    p.add_argument("--format", choices=list(FORMATS), help="default: from the suffix of -o (.onnx, .pt2, .pt)")
    p.add_argument("--weights", help="weights for NAME (model.safetensors or its folder) instead of the pretrained")
    p.add_argument("--dynamic-batch", action="store_true", help="accept any batch size (default: a batch of one)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("-o", "--output", required=True, help="the file to write; config.json is written beside it")
    p.set_defaults(run=run)
    return p


def _load(args) -> nn.Module:
    folder = Path(args.model)
    if folder.is_dir():
        if args.weights:
            raise ValueError(f"{folder}: a folder brings its own weights; --weights is for a model NAME")
        architecture = read_config(folder).get("architecture")
        if not architecture:
            raise WeightsError(f"{folder / 'config.json'}: no 'architecture' (is this a folder of zoo weights?)")
        return create_model(architecture, pretrained=folder)
    return create_model(args.model, pretrained=args.weights or True)


def run(args) -> int:
    _format_of(Path(args.output), args.format, args.opset)  # usage errors before the model is built
    try:
        model = _load(args)
        config = export(model, args.output, args.format, dynamic_batch=args.dynamic_batch, opset=args.opset)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    v = config["verified"]
    print(f"{args.output}: {config['format']}, input {'x'.join(map(str, config['input']['shape']))}, "
          f"{config['num_classes']} classes; {v['runtime']} matches the model at batch sizes "
          f"{', '.join(map(str, v['batch_sizes']))} (max abs error {v['max_abs_error']:.2g})")
    print(f"{Path(args.output).parent / 'config.json'}: preprocessing and labels")
    return 0


__all__ = ["export", "ExportError", "add_parser", "FORMATS"]
