"""Element types against the ONNX schemas: a constant or graph input whose dtype its op does not accept
(a float shape for Reshape, int64 weights for Conv, float64 weights beside a float32 input) is refused
before any handler reads it, since a handler would otherwise cast it or fail somewhere less clear."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .errors import ConversionError


def _type_str(dtype: np.dtype) -> str | None:
    try:
        code = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except Exception:  # a dtype ONNX has no tensor type for: nothing to check
        return None
    return f"tensor({helper.tensor_dtype_to_string(code).removeprefix('TensorProto.').lower()})"


def check_input_types(graph) -> None:
    """Each node's inputs that the file types itself (initializers, graph inputs) against its schema."""
    declared = set(graph.inputs) | {n for n, v in graph.values.items() if v.const is not None}
    for node in graph.nodes:
        try:
            schema = onnx.defs.get_schema(node.op_type, node.opset, node.domain)
        except onnx.defs.SchemaError:
            continue  # ops without a schema (other domains) are their handlers' business
        if not schema.inputs:
            continue
        constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        bound: dict[str, tuple[int, str, str]] = {}
        for i, name in enumerate(node.inputs[:len(node.proto.input)]):
            value = graph.values.get(name)
            if not name or name not in declared or value is None or value.dtype is None:
                continue
            formal = schema.inputs[min(i, len(schema.inputs) - 1)]
            actual = _type_str(value.dtype)
            allowed = constraints.get(formal.type_str, {formal.type_str})
            if actual is None or not all(a.startswith("tensor(") for a in allowed):
                continue
            if actual not in allowed:
                raise ConversionError(f"{graph.where(node)}: input {i} ({name!r}) is {actual}, which {node.op_type} "
                                      f"does not accept there (allowed: {', '.join(sorted(allowed))})")
            if formal.type_str in constraints and formal.is_homogeneous:
                first = bound.setdefault(formal.type_str, (i, name, np.dtype(value.dtype).name))
                if first[2] != np.dtype(value.dtype).name:
                    raise ConversionError(
                        f"{graph.where(node)}: inputs {first[1]!r} and {name!r} ({formal.type_str}) must share one "
                        f"element type, but have input {first[0]} {first[2]}, input {i} {np.dtype(value.dtype).name}")
