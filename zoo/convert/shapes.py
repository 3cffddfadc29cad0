"""Ranks and shapes where onnx shape inference gives up, from two more sources.

1. onnxruntime's symbolic shape inference (``onnxruntime.tools.symbolic_shape_infer``), which follows
   Reshape/Slice/Split chains that onnx's own inference leaves as ``unk__N``.
2. A probe: the graph run by onnxruntime twice on small random inputs of different batch (and free spatial)
   sizes, recording every still-unknown intermediate. A dimension equal in both runs is a constant of the
   graph; one that follows the batch is ``BATCH``; any other stays unknown (``None``).

Only what is unknown is filled in: a shape onnx inference already knows is never changed, so a file that
converted before converts to the same code.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
from onnx import helper

BATCH = "batch"
# Sizes the probe gives a free (symbolic, non-batch) input dimension: small, distinct, multiples of 32.
PROBE_SIZES = (64, 96)
PROBE_BATCHES = (1, 2)


def _is_unknown(dim, declared: set[str]) -> bool:
    return dim is None or (isinstance(dim, str) and dim not in declared)


def needs_refining(values: dict, names: list[str], declared: set[str]) -> list[str]:
    """The names whose rank, dtype or some dimension is unknown."""
    out = []
    for name in names:
        v = values.get(name)
        if v is not None and v.const is not None:
            continue
        if v is None or v.shape is None or v.dtype is None or any(_is_unknown(d, declared) for d in v.shape):
            out.append(name)
    return out


def declared_dims(model: onnx.ModelProto, runtime_inputs: list[str]) -> set[str]:
    names = {BATCH}
    for inp in model.graph.input:
        if inp.name in runtime_inputs and inp.type.HasField("tensor_type"):
            names.update(d.dim_param for d in inp.type.tensor_type.shape.dim if d.dim_param)
    return names


def symbolic_infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference, or None where it cannot handle the graph."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return None
    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception:  # the tool raises bare Exceptions and asserts on graphs it does not know
        return None


def _feed(inp: onnx.ValueInfoProto, run: int, batch: int, rng: np.random.Generator) -> np.ndarray | None:
    if not inp.type.HasField("tensor_type"):
        return None
    tensor = inp.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    shape = []
    for i, d in enumerate(tensor.shape.dim):
        if d.HasField("dim_value"):
            shape.append(d.dim_value)
        elif i == 0 and d.dim_param == BATCH:
            shape.append(batch)
        else:
            shape.append(PROBE_SIZES[run])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return np.ones(shape, dtype=bool)
    return rng.integers(0, 4, shape).astype(dtype)


def probe(model: onnx.ModelProto, runtime_inputs: list[str], wanted: list[str],
          weights: dict[str, np.ndarray]) -> dict[str, tuple[tuple, np.dtype]] | None:
    """{name: (shape with None for sizes that changed between runs, dtype)}, or None if a run fails.

    ``model`` is weight-free: its big initializers are graph inputs, fed here from ``weights``. onnxruntime
    reads fed arrays in place, so the probe never serializes or copies the weights; as initializers they
    would be copied (``add_external_initializers`` included) and prepacked, doubling a conversion's memory.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name in wanted:
        if name not in present:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
    names = [o.name for o in m.graph.output]
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # a graph onnxruntime cannot load: the probe just learns nothing
        return None
    # A graph that fixes batch 1 inside (Reshape to [1, ...]) only runs at batch 1.
    for batches in (PROBE_BATCHES, (1, 1)):
        results = _runs(session, model, runtime_inputs, names, batches, weights)
        if results is not None:
            return _compare(results, wanted, batches)
    return None


def _runs(session, model, runtime_inputs, names, batches, weights) -> list[dict] | None:
    rng = np.random.default_rng(0)
    results = []
    try:
        for run in range(2):
            feeds = {i.name: _feed(i, run, batches[run], rng) for i in model.graph.input if i.name in runtime_inputs}
            if any(v is None for v in feeds.values()):
                return None
            results.append(dict(zip(names, session.run(names, {**feeds, **weights}))))
    except Exception:  # a graph onnxruntime cannot run on made-up inputs: the probe just learns nothing
        return None
    return results


def _compare(results, wanted, batches) -> dict[str, tuple[tuple, np.dtype]]:
    found = {}
    for name in wanted:
        a, b = results[0].get(name), results[1].get(name)
        if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray) or a.ndim != b.ndim:
            continue
        dims = []
        for i, (x, y) in enumerate(zip(a.shape, b.shape)):
            if x == y:
                dims.append(int(x))
            elif i == 0 and (x, y) == batches:
                dims.append(BATCH)
            else:
                dims.append(None)
        found[name] = (tuple(dims), a.dtype)
    return found


def merge(old: tuple | None, new: tuple | None, declared: set[str]) -> tuple | None:
    """``old`` with its unknown dimensions (or its unknown rank) taken from ``new``."""
    if new is None:
        return old
    if old is None:
        return tuple(d if isinstance(d, int) or d in declared else None for d in new)
    if len(old) != len(new):
        return old
    return tuple(n if _is_unknown(o, declared) and (isinstance(n, int) or n in declared) else o
                 for o, n in zip(old, new))
