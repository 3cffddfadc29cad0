"""The converter's public entry points: convert, load and layers."""
from __future__ import annotations

import atexit
import collections
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..version import __version__
from .blockcode import structured
from .emit import Header, Method, emit_body, emit_module, split_at_layer
from .errors import ConversionError
from .ir import Graph, build_graph
from .loader import load_model
from .lower import Lowering
from .naming import Namespace, RESERVED, class_name, safe_comment, sanitize
from .folding import fold_constants
from .passes import adapt_global_pool, drop_dead_nodes, forward_identities, run_passes
from .quantized import dequantize_activations, dequantize_dynamic, restore_float_math
from .registry import find_handler


@dataclass
class ConversionResult:
    name: str
    class_name: str
    source_path: Path
    weights_path: Path
    onnx_path: Path
    sha256: str
    opset: int
    inputs: list[str]
    outputs: list[str]
    num_parameters: int
    op_counts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.op_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return (f"converted {self.onnx_path} (opset {self.opset}, sha256 {self.sha256[:12]}...)\n"
                f"  ops: {ops}\n"
                f"  parameters: {self.num_parameters:,}\n"
                f"  wrote {self.source_path} (class {self.class_name})\n"
                f"  wrote {self.weights_path}")


@dataclass
class _Compiled:
    source: str
    cls: str
    tensors: dict[str, np.ndarray]
    graph: Graph
    op_counts: dict[str, int]


def _default_name(path: Path) -> str:
    stem = sanitize(path.stem.split(".")[0] if path.stem.count(".") > 1 else path.stem.replace(".", "_"))
    stem = stem.lower() or "model"
    return stem if not stem[0].isdigit() else "model_" + stem


def _regenerate_command(graph) -> str:
    """The shell command that writes this source again; a graph that needs handlers from outside this package
    names the modules registering them, since the command line has to import them first."""
    plugins: dict[str, str] = {}
    for node in graph.nodes:
        module = getattr(find_handler(node.domain, node.op_type, node.opset), "__module__", None) or __package__
        if not module.startswith(__package__ + ".") and module != __package__:
            plugins.setdefault(module, node.op_type)
    options = "".join(f" --plugin {m}" if m != "__main__" else f" --plugin MODULE (the module registering {op})"
                      for m, op in plugins.items())
    return f"python -m zoo.convert {graph.source.path.name} -o DIR{options}"


def _compile(onnx_path, name: str, outputs, source_name, source_sha256, regenerate, classifier,
             structure: bool = True, global_pool: str = "fixed", dequantize: bool = False) -> _Compiled:
    loaded = load_model(onnx_path)
    graph = run_passes(build_graph(loaded), list(outputs) if outputs else None)
    if global_pool == "adaptive":
        adapt_global_pool(graph)
    if dequantize:
        dequantize_activations(graph)
        dequantize_dynamic(graph)
        restore_float_math(graph)
        forward_identities(graph)
        drop_dead_nodes(graph)
    op_counts = dict(collections.Counter(n.op_type for n in graph.nodes))
    lowering = Lowering(graph)
    parts = lowering.run()
    for out in graph.outputs:
        if graph.value(out).const is not None:
            lowering.reference(out)
    if structure:
        parts = structured(graph, parts, {classifier} if classifier else set())
    if len(graph.inputs) == 1:  # named as torchvision names it; the header comment keeps the ONNX name
        arg_names = {graph.inputs[0]: "x"}
    else:
        args = Namespace(RESERVED)
        arg_names = {inp: args.claim(inp, fallback="input") for inp in graph.inputs}
    if classifier:
        features, body, head = split_at_layer(graph, parts, classifier)
        methods = [
            Method("forward_features", arg_names, 1, emit_body(body, parts, arg_names, [features])),
            Method("forward_head", {features: "features"}, 1,
                   emit_body(head, parts, {features: "features"}, graph.outputs)),
            Method("forward", arg_names, 1,
                   [f"return self.forward_head(self.forward_features({', '.join(arg_names.values())}))"]),
        ]
    else:
        methods = [Method("forward", arg_names, len(graph.outputs),
                          emit_body(parts.statements, parts, arg_names, graph.outputs))]
    opset = graph.opsets.get("", 0)
    header = Header(
        source_name=safe_comment(source_name or loaded.path.name),
        sha256=safe_comment(source_sha256 or loaded.sha256),
        opset=opset,
        producer=safe_comment(graph.producer),
        regenerate=safe_comment(regenerate or _regenerate_command(graph)),
        version=__version__,
        inputs=safe_comment(", ".join(f"{name} is the ONNX input {inp}" for inp, name in arg_names.items()
                                      if name != inp)),
    )
    cls = class_name(name)
    source = emit_module(graph, parts, cls, header, methods)
    return _Compiled(source, cls, parts.tensors, graph, op_counts)


def _import_source(path: Path, cls: str) -> type[torch.nn.Module]:
    module_name = f"zoo_generated_{sanitize(path.stem)}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # lets torch.compile, pickle and inspect find the class
    spec.loader.exec_module(module)
    return getattr(module, cls)


def _as_tensor(array: np.ndarray, owners: set[int]) -> torch.Tensor:
    """A tensor over ``array``'s memory (read-only memory is fine: the state is only written to disk) unless
    another weight shares it, which safetensors refuses: then a copy. No weight is copied needlessly."""
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not array.flags.c_contiguous or id(root) in owners:
        array = np.array(array, copy=True)
    owners.add(id(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the given NumPy array is not writable"
        return torch.from_numpy(array)


def _state_dict(model: torch.nn.Module, tensors: dict[str, np.ndarray], where: str) -> dict[str, torch.Tensor]:
    state = {}
    expected = model.state_dict()
    owners: set[int] = set()
    for key, current in expected.items():
        if key in tensors:
            t = _as_tensor(tensors[key], owners)
            if tuple(t.shape) != tuple(current.shape):
                raise ConversionError(f"{where}: weight {key!r} has shape {tuple(t.shape)}, "
                                      f"layer expects {tuple(current.shape)}")
            state[key] = t.to(current.dtype).contiguous()
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(current.shape, dtype=current.dtype)
        else:
            raise ConversionError(f"{where}: no weight for {key!r}; please report this")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ConversionError(f"{where}: weights {extra[:5]} have no place in the module; please report this")
    return state


def write_atomically(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``: readers see the old file or the new one, never half of one.
    The file gets the usual permissions (safetensors writes 0600)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def convert(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *, name: str | None = None,
            outputs: Sequence[str] | None = None, classifier: str | None = None, source_name: str | None = None,
            source_sha256: str | None = None, regenerate: str | None = None,
            structure: bool = True, global_pool: str = "fixed", dequantize: bool = False) -> ConversionResult:
    """Convert an ONNX file into ``<out_dir>/<name>.py`` (plain PyTorch) and ``<out_dir>/<name>.safetensors``.

    ``outputs`` cuts the graph at the named tensors. ``classifier`` names a generated layer (e.g. ``"fc"``):
    the module then gets ``forward_features`` (everything before it) and ``forward_head``, like timm's
    models. ``structure`` (the default) turns repeated blocks into classes and restores the module tree of
    PyTorch exports (see :mod:`zoo.convert.blocks`); ``structure=False`` writes one flat class.
    ``source_name``, ``source_sha256`` and ``regenerate``
    only change the header of the generated file (the build uses them so that a stand-in and the real
    file give byte-identical source). ``global_pool="adaptive"`` turns a pooling whose window covers the
    whole feature map into adaptive pooling (identical at the traced size; other input sizes then work).
    A quantized (QDQ) graph keeps its activations' fake quantization, so it matches onnxruntime;
    ``dequantize=True`` drops it for a plain float model (approximate: see README, "Quantized graphs").
    """
    if global_pool not in ("fixed", "adaptive"):
        raise ValueError(f"global_pool must be 'fixed' or 'adaptive', got {global_pool!r}")
    path = Path(onnx_path)
    name = sanitize(name) if name else _default_name(path)
    if not name:
        raise ConversionError(f"{path}: name {name!r} is not usable as a module name")
    try:
        compiled = _compile(path, name, outputs, source_name, source_sha256, regenerate, classifier,
                            structure, global_pool, dequantize)
    except ConversionError:
        raise
    except RecursionError as exc:
        raise ConversionError(f"{path}: the graph is too deeply nested to convert") from exc
    except Exception as exc:  # a malformed graph we did not anticipate: still the one documented error type
        raise ConversionError(f"{path}: cannot convert ({type(exc).__name__}: {exc}); if the file is valid ONNX, "
                              "please report this") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source_path, weights_path = out / f"{name}.py", out / f"{name}.safetensors"

    with tempfile.TemporaryDirectory(dir=out, prefix=".zoo-") as staging:
        staged = Path(staging) / f"{name}.py"
        staged.write_text(compiled.source, encoding="utf-8")
        try:
            with torch.device("meta"):  # only shapes and dtypes are read: skip allocating and initializing weights
                model = _import_source(staged, compiled.cls)()
        except Exception as exc:  # a layer PyTorch refuses that no check caught: still the one error type
            raise ConversionError(f"{path}: the generated module cannot be built ({type(exc).__name__}: {exc}); "
                                  "please report this") from exc
        state = _state_dict(model, compiled.tensors, str(path))
        write_atomically(weights_path, lambda tmp: save_file(state, str(tmp), metadata={
            "format": "pt", "source_sha256": compiled.graph.source.sha256}))
        write_atomically(source_path, lambda tmp: tmp.write_text(compiled.source, encoding="utf-8"))

    params = sum(int(np.prod(t.shape)) for k, t in state.items() if not k.endswith("num_batches_tracked")
                 and not k.endswith(("running_mean", "running_var")))
    return ConversionResult(
        name=name, class_name=compiled.cls, source_path=source_path, weights_path=weights_path, onnx_path=path,
        sha256=compiled.graph.source.sha256, opset=compiled.graph.opsets.get("", 0),
        inputs=list(compiled.graph.inputs), outputs=list(compiled.graph.outputs), num_parameters=params,
        op_counts=compiled.op_counts,
    )


_LOAD_DIR: list[str] = []


def _load_dir() -> Path:
    if not _LOAD_DIR:
        _LOAD_DIR.append(tempfile.mkdtemp(prefix="zoo-convert-"))
        atexit.register(shutil.rmtree, _LOAD_DIR[0], ignore_errors=True)
    return Path(_LOAD_DIR[0])


def instantiate(source_path: str | os.PathLike, class_name: str, weights_path: str | os.PathLike | None = None
                ) -> torch.nn.Module:
    """Import a generated module file, build its class and (optionally) load its safetensors weights."""
    model = _import_source(Path(source_path), class_name)()
    if weights_path is not None:
        model.load_state_dict(load_file(str(weights_path)), strict=True)
    return model


def load_converted(folder: str | os.PathLike, name: str | None = None) -> torch.nn.Module:
    """The module that ``convert`` (or ``python -m zoo.convert -o FOLDER``) wrote into ``folder``, weights
    loaded, in eval mode. ``name`` picks one when the folder holds several conversions."""
    folder = Path(folder)
    found = sorted(p.stem for p in folder.glob("*.py") if (folder / f"{p.stem}.safetensors").is_file())
    if name is not None:
        found = [n for n in found if n == name]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)}); pass name=..."
        raise ConversionError(f"{folder}: {what} converted models (NAME.py beside NAME.safetensors)")
    return instantiate(folder / f"{found[0]}.py", class_name(found[0]), folder / f"{found[0]}.safetensors").eval()


def load(onnx_path: str | os.PathLike, *, name: str | None = None, outputs: Sequence[str] | None = None,
         **options) -> torch.nn.Module:
    """Convert and return the module, weights loaded, in eval mode. (A folder ``convert`` wrote is read
    back by :func:`load_converted`.)

    The module carries ``zoo_onnx_inputs`` and ``zoo_onnx_outputs``: the ONNX tensor names of its
    arguments and results, which :func:`verify` uses.
    """
    target = _load_dir() / uuid.uuid4().hex[:12]
    result = convert(onnx_path, target, name=name, outputs=outputs, **options)
    model = instantiate(result.source_path, result.class_name, result.weights_path)
    model.zoo_onnx_inputs = list(result.inputs)
    model.zoo_onnx_outputs = list(result.outputs)
    return model.eval()


@dataclass
class LayerInfo:
    name: str
    layer: str | None  # the generated module's attribute for this node (None: plain code, or unsupported)
    op_type: str
    domain: str
    opset: int
    inputs: list[tuple[str, tuple | None]]
    outputs: list[tuple[str, tuple | None]]
    parameters: int
    supported: bool

    def __str__(self) -> str:
        def shape(s):
            return "?" if s is None else "x".join(str(d) for d in s) or "scalar"

        ins = ", ".join(shape(s) for _, s in self.inputs)
        outs = ", ".join(f"{n} {shape(s)}" for n, s in self.outputs)
        mark = "" if self.supported else "  UNSUPPORTED"
        return (f"{self.op_type:<20} {self.name[:24]:<24} {(self.layer or '-')[:24]:<24} {ins:<32} -> {outs:<28} "
                f"{self.parameters:>11,}{mark}")

    HEADER = f"{'op':<20} {'onnx node':<24} {'layer':<24} {'inputs':<32}    {'outputs':<28} {'parameters':>11}"


def _layer_names(loaded) -> dict[str, str]:
    """Output value -> generated layer name, from a lowering of the graph (empty where it cannot lower)."""
    try:
        lowering = Lowering(run_passes(build_graph(loaded)))
        lowering.run()
    except Exception:  # an unsupported op: `layers` still lists every node, marking it
        return {}
    return lowering.layer_of


def layers(onnx_path: str | os.PathLike) -> list[LayerInfo]:
    """Inspect a file without converting it: every node (after folding constants) with its shapes,
    parameter count and whether the converter supports it. Shapes show the batch dimension as 'batch'."""
    loaded = load_model(onnx_path)
    graph = build_graph(loaded)
    fold_constants(graph)
    layer_of = _layer_names(loaded)
    rows = []
    for node in graph.nodes:
        def described(names):
            out = []
            for n in names:
                if n:
                    v = graph.value(n)
                    out.append((n, tuple(v.const.shape) if v.const is not None else v.shape))
            return out

        params = sum(int(graph.value(i).const.size) for i in node.inputs
                     if i and graph.value(i).const is not None and graph.value(i).const.dtype.kind == "f")
        rows.append(LayerInfo(node.name, next((layer_of[o] for o in node.outputs if o in layer_of), None), node.op_type, node.domain or "ai.onnx", node.opset, described(node.inputs),
                              described(node.outputs), params,
                              find_handler(node.domain, node.op_type, node.opset) is not None))
    return rows
