"""From a registry entry to its module: the upstream graph cut at the logits and converted, the same way for
the build (which writes the committed source) and for pretrained weights rebuilt from the pinned ONNX file;
and the fingerprint that says when either must be made again."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..convert import ConversionError, ConversionResult, convert
from ..registry import Entry
from ..version import __version__
from .infer import complete, fix_input_size

STANDIN_SEED = 0


class BuildError(RuntimeError):
    """An entry failed to build; the message names the entry and the step."""


def converter_digest() -> str:
    """Hash of the code that makes a model's source and weights: the converter, this module, and (read as
    files, not imported) the build and its stand-ins, whose outputs the build skips when nothing changed."""
    digest = hashlib.sha256()
    here = Path(__file__).parents[1]
    for path in sorted([*here.joinpath("convert").rglob("*.py"), here / "weights" / "conversion.py",
                        here / "weights" / "infer.py",
                        here / "publish" / "build.py", here / "publish" / "standins.py"]):
        digest.update(path.relative_to(here).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fingerprint(entry: Entry, standin: bool) -> str:
    key = {"entry": entry.raw, "converter": __version__, "code": converter_digest(), "standin": standin,
           "seed": STANDIN_SEED if standin else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def prepare_graph(onnx_path: Path, logits: str, out_path: Path, input_size=None) -> Path:
    """The graph cut at the logits tensor and flattened to (N, classes), as zoo models return; an input
    size the file leaves free is fixed to ``input_size``."""
    model = onnx.load(str(onnx_path))
    if input_size is not None:
        fix_input_size(model, input_size)
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    if logits not in infos:
        raise BuildError(f"{onnx_path.name}: no tensor {logits!r} (registry field 'logits')")
    info = infos[logits]
    rank = len(info.type.tensor_type.shape.dim)
    del model.graph.output[:]
    if rank > 2:
        flat = f"{logits}_flat"
        model.graph.node.append(helper.make_node("Flatten", [logits], [flat], axis=1))
        dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        per_sample = "classes" if None in dims[1:] else int(np.prod(dims[1:]))
        model.graph.output.append(helper.make_tensor_value_info(
            flat, info.type.tensor_type.elem_type, [dims[0] or "batch", per_sample]))
    else:
        model.graph.output.append(info)
    onnx.save(model, str(out_path))
    return out_path


def convert_entry(entry: Entry, onnx_path: Path, work: Path) -> tuple[Path, ConversionResult]:
    """(the graph cut at the logits, its conversion): the same for the build and for rebuilt weights."""
    entry = complete(entry, onnx_path, work)
    prepared = prepare_graph(onnx_path, entry.logits, work / "prepared.onnx", entry.input_size)
    try:
        return prepared, convert(prepared, work / "converted", name=entry.name, classifier=entry.classifier,
                                 source_name=entry.source.file, source_sha256=entry.source.sha256,
                                 regenerate=f"python scripts/build.py {entry.name}",
                                 global_pool=entry.global_pool, structure=True)
    except ConversionError as exc:
        raise BuildError(f"{entry.name}: {exc}") from None
