"""What a registry entry may leave out, read from its ONNX file: the input size, the logits tensor (a final
Softmax cut off), the classifier layer, the labels, whether the head's pooling can be adaptive.

``complete(entry, onnx_path, work)`` fills the missing fields and checks the given ones against the file
(an error names the field and what the file says). The build records what it inferred in the generated
source (a header comment and ``ZOO_INFERRED``), from which ``from_generated`` completes the entry again
when a model is created, without the ONNX file.
"""
from __future__ import annotations

import dataclasses
from math import prod
from pathlib import Path
from typing import Any

import onnx

from ..convert import ConversionError
from ..convert.blockcode import structured
from ..convert.emit import split_at_layer
from ..convert.ir import Graph, build_graph
from ..convert.loader import load_model
from ..convert.lower import Lowering
from ..convert.naming import safe_comment
from ..convert.passes import adapt_global_pool, run_passes
from ..registry import LAYER, Entry, RegistryError

IMAGENET_CLASSES = 1000
WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")
SCORES = ("Softmax", "LogSoftmax")  # a final one is cut off: zoo models return logits


def _fail(entry: Entry, field: str, message: str) -> RegistryError:
    return RegistryError(f"{entry.name}: {field}: {message} ({entry.source.file})")


def _dims(info: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]


def _shown(dims: list[int | None]) -> str:
    return "x".join(str(d) if d is not None else "?" for d in dims)


def image_input(entry: Entry, proto: onnx.ModelProto) -> onnx.ValueInfoProto:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
        described = ", ".join(f"{safe_comment(i.name)!r} {_shown(_dims(i))}" for i in inputs)
        raise _fail(entry, "input_size", f"expected one image input (N, C, H, W), the file has {described or 'none'}")
    return inputs[0]


def input_size(entry: Entry, proto: onnx.ModelProto) -> tuple[int, int, int]:
    """The entry's input size, checked against the file's declared input, or the file's when it fixes it."""
    info = image_input(entry, proto)
    declared = _dims(info)[1:]
    where = f"the file's input {safe_comment(info.name)!r} is {_shown(_dims(info))}"
    if entry.input_size is not None:
        if any(d is not None and d != g for d, g in zip(declared, entry.input_size)):
            raise _fail(entry, "input_size", f"{list(entry.input_size)} contradicts the file: {where}")
        return tuple(entry.input_size)
    if None in declared:
        raise _fail(entry, "input_size", f"{where}, its size left free; give one (zoo add --input-size "
                                         f"{declared[0] or 3},224,224, or input_size: [C, H, W] in the entry)")
    return tuple(declared)


def fix_input_size(proto: onnx.ModelProto, size: tuple[int, int, int]) -> None:
    """Give a graph whose input leaves C, H or W free the entry's size (the batch stays free)."""
    initializers = {t.name for t in proto.graph.initializer}
    for info in proto.graph.input:
        if info.name in initializers:
            continue
        for dim, value in zip(list(info.type.tensor_type.shape.dim)[1:], size):
            if not dim.HasField("dim_value"):
                dim.dim_value = value


def logits(entry: Entry, proto: onnx.ModelProto) -> str:
    """The entry's logits tensor, checked to be in the file, or the file's one output (before a final Softmax)."""
    outputs = [o.name for o in proto.graph.output]
    if entry.logits is not None:
        known = {o for n in proto.graph.node for o in n.output} | set(outputs)
        if entry.logits not in known:
            listed = ", ".join(repr(safe_comment(o)) for o in outputs)
            raise _fail(entry, "logits", f"no tensor {safe_comment(entry.logits)!r} in the file (its outputs: {listed})")
        return entry.logits
    if len(outputs) != 1:
        listed = ", ".join(repr(safe_comment(o)) for o in outputs)
        raise _fail(entry, "logits", f"the file has {len(outputs)} outputs ({listed}); say which one holds the class "
                                     "scores (zoo add --logits NAME, or logits: NAME in the entry)")
    producer = next((n for n in proto.graph.node if outputs[0] in n.output), None)
    if producer is not None and producer.op_type in SCORES:
        return producer.input[0]
    return outputs[0]


def _lowered(prepared: Path, logits_name: str) -> tuple[Graph, Any, Lowering]:
    graph = run_passes(build_graph(load_model(prepared)), [logits_name])
    lowering = Lowering(graph)
    return graph, lowering.run(), lowering


def _head_layer(graph: Graph, lowering: Lowering, parts) -> list[str]:
    """Names (module path first, then flat attribute) of the last layer with weights before the logits,
    found walking back through the weightless ops (pooling, flatten, activations) of the head."""
    producers = graph.producer_of()
    value = graph.outputs[0]
    while value in producers:
        node = producers[value]
        consts = [i for i in node.inputs if i and graph.value(i).const is not None]
        if node.op_type in WEIGHTED and any(graph.value(i).const.ndim >= 2 for i in consts):
            attr = next((lowering.layer_of[o] for o in node.outputs if o in lowering.layer_of), None)
            hint = next((layer.hint for layer in parts.layers if layer.attr == attr), "")
            return [n for n in dict.fromkeys([hint, attr]) if n and LAYER.fullmatch(n)]
        moving = [i for i in node.inputs if i and graph.value(i).const is None]
        if len(moving) != 1:
            return []
        value = moving[0]
    return []


def _splits(graph: Graph, parts, name: str) -> bool:
    try:
        split_at_layer(graph, structured(graph, parts, {name}), name)
        return True
    except ConversionError:
        return False


def _adaptive(graph: Graph) -> bool:
    try:
        adapt_global_pool(graph)
        return True
    except ConversionError:
        return False


def _description(entry: Entry, classes: int, size) -> str:
    return f"{entry.name}: {classes:,} classes, {'x'.join(map(str, size))} input, converted from {entry.source.file}"


def _as_given(entry: Entry) -> Entry | None:
    """An entry that says everything itself (the zoo's own) is taken as written: nothing to read."""
    if not (entry.complete and entry.labels is not None):
        return None
    classes = len(entry.labels) if isinstance(entry.labels, tuple) else IMAGENET_CLASSES
    return dataclasses.replace(entry, global_pool=entry.global_pool or "fixed", num_classes=classes,
                               description=entry.description or _description(entry, classes, entry.input_size))


def complete(entry: Entry, onnx_path: Path, work: Path) -> Entry:
    """The entry with every field it left out read from the file, and the given ones checked against it."""
    if entry.num_classes is not None and entry.complete:
        return entry  # completed already (from_generated leaves out the logits: only the file has them)
    if (given := _as_given(entry)) is not None:
        return given
    try:
        proto = onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file at all
        raise RegistryError(f"{entry.name}: {onnx_path}: not a readable ONNX file ({type(exc).__name__})") from None
    size = input_size(entry, proto)
    scores = logits(entry, proto)
    fix_input_size(proto, size)
    work.mkdir(parents=True, exist_ok=True)
    prepared = work / "inferring.onnx"
    onnx.save(proto, str(prepared))
    try:
        graph, parts, lowering = _lowered(prepared, scores)
    except ConversionError as exc:  # named after the user's file, not this working copy
        raise RegistryError(f"{entry.name}: {str(exc).replace(str(prepared), str(onnx_path))}") from None
    finally:
        prepared.unlink(missing_ok=True)
    shape = graph.value(scores).shape
    per_sample = list(shape[1:]) if shape else []
    if not per_sample or not all(isinstance(d, int) for d in per_sample):
        raise _fail(entry, "logits", f"cannot tell the number of classes of {safe_comment(scores)!r} "
                                     f"(shape {shape})")
    spatial = per_sample[1:]
    classes = prod(per_sample)
    candidates = _head_layer(graph, lowering, parts)
    if entry.classifier is not None:
        # the last layer with weights, or (where the walk back finds none) any layer the head can be split at
        if entry.classifier not in candidates if candidates else not _splits(graph, parts, entry.classifier):
            found = next((c for c in candidates if _splits(graph, parts, c)), None)
            raise _fail(entry, "classifier", f"{entry.classifier!r} is not a layer that maps the features to "
                                             f"{safe_comment(scores)!r}; " +
                        (f"the file's classifier is {found!r}" if found else "the file has none"))
        classifier = entry.classifier
    else:
        found = [c for c in candidates if _splits(graph, parts, c)] if all(d == 1 for d in spatial) else []
        if not found:
            raise _fail(entry, "classifier", f"no layer with weights maps pooled features to the output "
                                             f"{safe_comment(scores)!r} ({'x'.join(map(str, per_sample))} per image): "
                                             "this looks like a detector or a feature extractor, and zoo models are "
                                             "classifiers with a replaceable head; if the file has a class-score "
                                             "output, name it with --logits")
        classifier = found[0]
    labels = entry.labels
    if labels is None:
        labels = "imagenet-1k" if classes == IMAGENET_CLASSES else None
    elif labels == "imagenet-1k" and classes != IMAGENET_CLASSES:
        raise _fail(entry, "labels", f"imagenet-1k has {IMAGENET_CLASSES:,} classes, the file's "
                                     f"{safe_comment(scores)!r} has {classes:,}")
    elif isinstance(labels, tuple) and len(labels) != classes:
        raise _fail(entry, "labels", f"{len(labels):,} names for the file's {classes:,} classes")
    given = entry.classifier is not None and entry.logits is not None and entry.input_size is not None
    global_pool = entry.global_pool or ("fixed" if given else ("adaptive" if _adaptive(graph) else "fixed"))
    filled = {"input_size": size, "logits": scores, "classifier": classifier, "labels": labels,
              "global_pool": global_pool}
    inferred = tuple(k for k, v in filled.items() if getattr(entry, k) is None and v is not None)
    description = entry.description or _description(entry, classes, size)
    if entry.description is None:
        inferred += ("description",)
    return dataclasses.replace(entry, **filled, num_classes=classes, description=description, inferred=inferred)


def annotate(source: str, entry: Entry) -> str:
    """The generated source with what was read from the file: in the header for people, and as
    ``ZOO_INFERRED`` (identifiers and numbers only) for :func:`from_generated`."""
    if not entry.inferred and entry.num_classes == IMAGENET_CLASSES and not isinstance(entry.labels, tuple):
        return source
    facts = {"classifier": entry.classifier, "input_size": list(entry.input_size), "num_classes": entry.num_classes,
             "labels": entry.labels if entry.labels == "imagenet-1k" else None, "global_pool": entry.global_pool,
             "inferred": list(entry.inferred)}
    said = {"input_size": "x".join(map(str, entry.input_size)), "logits": safe_comment(entry.logits),
            "labels": entry.labels if entry.labels == "imagenet-1k" else
            f"{entry.num_classes} numbered" if entry.labels is None else f"{entry.num_classes} names given",
            "classifier": entry.classifier, "global_pool": entry.global_pool, "description": "generated"}
    comment = ("# Read from the file (absent from the registry entry): "
               + ", ".join(f"{k} {said[k]}" for k in entry.inferred) + "\n") if entry.inferred else ""
    head, _, rest = source.partition("import torch\n")
    return (f"{head}{comment}import torch\n{rest.rstrip()}\n\n\n"
            "# What zoo.weights.infer read from the ONNX file; zoo.create_model completes the entry with it.\n"
            f"ZOO_INFERRED = {facts!r}\n")


def from_generated(entry: Entry, module) -> Entry:
    """The entry completed with what the build recorded in its generated source (``ZOO_INFERRED``)."""
    facts = getattr(module, "ZOO_INFERRED", None) or {}
    if not facts and (given := _as_given(entry)) is not None:
        return given
    missing = [k for k in ("input_size", "classifier") if getattr(entry, k) is None and k not in facts]
    if missing:
        raise RegistryError(f"{entry.name}: the entry leaves out {', '.join(missing)} and its generated source "
                            f"{getattr(module, '__file__', '')} does not say them; rebuild it "
                            f"(`zoo build {entry.name}`)")
    filled = {k: (tuple(facts[k]) if k == "input_size" else facts[k]) for k in ("input_size", "classifier", "labels")
              if getattr(entry, k) is None and k in facts}
    inferred = tuple(k for k in facts.get("inferred", ()) if getattr(entry, k, None) is None)
    entry = dataclasses.replace(entry, **filled, num_classes=int(facts.get("num_classes", IMAGENET_CLASSES)),
                                inferred=inferred, global_pool=entry.global_pool or facts.get("global_pool") or "fixed")
    if entry.description is None:
        entry = dataclasses.replace(entry, description=_description(entry, entry.num_classes, entry.input_size))
    return entry


__all__ = ["complete", "annotate", "from_generated", "fix_input_size", "IMAGENET_CLASSES"]
