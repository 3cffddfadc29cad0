"""Stage 6: run onnxruntime and the converted module on the same random inputs and compare."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx
import torch

from . import reference
from .errors import ConversionError
from .ir import BATCH, build_graph
from .loader import load_model

DEFAULT_TOLERANCE = 1e-4


@dataclass
class Comparison:
    output: str
    batch_size: int
    max_abs: float
    max_ref: float
    per_sample_reference: bool = False
    problem: str = ""

    @property
    def relative(self) -> float:
        if self.problem:
            return float("inf")
        return self.max_abs / self.max_ref if self.max_ref > 0 else (0.0 if self.max_abs == 0 else float("inf"))


@dataclass
class VerificationReport:
    """Max absolute error, and that error relative to the reference's largest magnitude, per output and batch."""

    path: str
    comparisons: list[Comparison] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.relative <= self.tolerance for c in self.comparisons)

    @property
    def worst(self) -> float:
        return max((c.relative for c in self.comparisons), default=float("inf"))

    def __str__(self) -> str:
        lines = [f"verification against onnxruntime ({os.path.basename(self.path)}), "
                 f"tolerance {self.tolerance:g} x max|reference|"]
        for c in self.comparisons:
            how = " (reference: per-sample runs stacked)" if c.per_sample_reference else ""
            if c.problem:
                lines.append(f"  {c.output} @ batch {c.batch_size}: FAILED - {c.problem}")
            else:
                lines.append(f"  {c.output} @ batch {c.batch_size}: max abs {c.max_abs:.3g}, "
                             f"relative {c.relative:.3g}{how}")
        lines.append("  => " + ("OK" if self.passed else "OUTSIDE TOLERANCE"))
        return "\n".join(lines)


def _ort_session(proto: onnx.ModelProto, outputs: list[str]):
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    present = {o.name for o in model.graph.output}
    del model.graph.output[:]
    for name in outputs:
        if name in types:
            model.graph.output.append(types[name])
        elif name in present or name:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return reference.session(model)


def _random_input(shape, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(dtype)


def _compare(names: list[str], reference: list, got: list, batch: int, per_sample: bool) -> list[Comparison]:
    """One comparison per output the graph or the module has: a missing or extra output, or one whose shape
    or dtype differs, is a failure before any value is compared."""
    found = []
    for i in range(max(len(names), len(got))):
        name = names[i] if i < len(names) else f"<extra output {i}>"
        if i >= len(got):
            found.append(Comparison(name, batch, float("inf"), 0.0, per_sample,
                                    f"missing: the module returned {len(got)} of {len(names)} outputs"))
            continue
        if i >= len(names):
            found.append(Comparison(name, batch, float("inf"), 0.0, per_sample,
                                    f"extra: the module returned {len(got)} outputs, the graph has {len(names)}"))
            continue
        out = got[i].detach().cpu().numpy()
        ref = np.asarray(reference[i])
        problem = (f"shape {out.shape} != reference {ref.shape}" if out.shape != ref.shape else
                   f"dtype {out.dtype} != reference {ref.dtype}" if out.dtype != ref.dtype else "")
        if problem:
            found.append(Comparison(name, batch, float("inf"), 0.0, per_sample, problem))
            continue
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        max_abs = float(np.nanmax(diff)) if diff.size else 0.0
        if np.isnan(diff).any() and not np.array_equal(np.isnan(out), np.isnan(ref)):
            max_abs = float("inf")
        max_ref = float(np.nanmax(np.abs(ref.astype(np.float64)))) if ref.size else 0.0
        found.append(Comparison(name, batch, max_abs, max_ref, per_sample))
    return found


def verify(onnx_path: str | os.PathLike, module: torch.nn.Module, *, batch_sizes: Sequence[int] = (1, 3),
           outputs: Sequence[str] | None = None, tolerance: float = DEFAULT_TOLERANCE, seed: int = 0
           ) -> VerificationReport:
    """Compare ``module`` with onnxruntime on the ONNX file at each batch size.

    ``outputs`` defaults to what the module was converted to return (``module.zoo_onnx_outputs``) or the
    graph's outputs. A graph that hard-codes batch 1 is run once per sample and the results stacked.
    """
    loaded = load_model(onnx_path, weights_apart=False)  # onnxruntime runs the whole model
    graph = build_graph(loaded)
    outputs = list(outputs or getattr(module, "zoo_onnx_outputs", None) or graph.outputs)
    session = _ort_session(loaded.proto, outputs)
    rng = np.random.default_rng(seed)
    report = VerificationReport(str(onnx_path), tolerance=tolerance)
    was_training = module.training
    module.eval()
    try:
        for batch in batch_sizes:
            feeds = {}
            for name in graph.inputs:
                value = graph.value(name)
                if value.shape is None or not all(isinstance(d, int) for d in value.shape[1:]):
                    raise ConversionError(f"{onnx_path}: input {name!r} has a dimension of unknown size; "
                                          "verify needs static sizes apart from the batch")
                shape = ((batch,) + tuple(value.shape[1:])) if value.shape and value.shape[0] == BATCH \
                    else tuple(value.shape)
                feeds[name] = _random_input(shape, value.dtype or np.dtype(np.float32), rng)
            fixed = {graph.static_batch_inputs.get(n) for n in feeds} - {None}
            if fixed - {1, batch}:
                raise ConversionError(f"{onnx_path}: the graph fixes the batch size at {sorted(fixed)}; "
                                      f"cannot verify batch {batch}")
            per_sample = batch > 1 and 1 in fixed
            if not per_sample:
                try:
                    reference = session.run(outputs, feeds)
                except Exception:
                    per_sample = batch > 1
                    if not per_sample:
                        raise
            if per_sample:
                runs = [session.run(outputs, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(batch)]
                reference = [np.concatenate([r[j] for r in runs]) for j in range(len(outputs))]
            with torch.no_grad():
                got = module(*[torch.from_numpy(feeds[n]) for n in graph.inputs])
            got = list(got) if isinstance(got, (tuple, list)) else [got]
            report.comparisons += _compare(outputs, reference, got, batch, per_sample)
    finally:
        module.train(was_training)
    return report
