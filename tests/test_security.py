"""Hostile and broken inputs: no code injection, no reads outside the model folder, fuzzed graphs and bytes."""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from zoo.convert import ConversionError, convert, load, verify
from zoo.convert.checks import memory_budget

from .helpers import KillRunner, changes_counted, changes_listed, kill_points, make_model, small_convnet, tensor

MARKER = "/tmp/zoo-pwned-marker"
PAYLOADS = [
    "__import__('os').system('touch /tmp/zoo-pwned-marker')",
    "x'); __import__('os').system('touch /tmp/zoo-pwned-marker'); ('",
    'a"""\nimport os\nos.system("touch /tmp/zoo-pwned-marker")\n"""',
    "line\nbreak\\back\\slash", "torch", "nn", "F", "self", "forward", "class", "lambda", "None", "0day", "",
    "ünïcödé_名前", "x" * 500, "a.b", "a-b", "a b",
]


def _hostile_model(tmp_path: Path, names: list[str]) -> Path:
    """A small net whose every name, doc string and the producer are hostile; names collide on purpose."""
    n = iter(names * 4)
    inp, w, b, c, r, out, w2 = (next(n) + f"{i}" * (i % 2) for i in range(7))
    pads = "pads_" + names[0]
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", [inp, w, b], [c], name=next(n), pads=[1, 1, 1, 1], doc_string=next(n)),
        helper.make_node("Relu", [c], [r], name=next(n)),
        helper.make_node("Pad", [r, pads], [out + "_pad"], name=next(n), mode="constant"),
        helper.make_node("Mul", [out + "_pad", w2], [out], name=next(n)),
    ]
    inits = {w: rng.normal(size=(2, 3, 3, 3)).astype(np.float32), b: rng.normal(size=(2,)).astype(np.float32),
             pads: np.array([0, 0, 0, 0, 0, 0, 0, 0], dtype=np.int64),
             w2: rng.normal(size=(1, 2, 1, 1)).astype(np.float32)}
    model = make_model(nodes, [tensor(inp, [1, 3, 5, 5])], [tensor(out, [1, 2, 5, 5])], inits,
                       name=names[0] or "g", producer_name=names[1])
    model.doc_string = names[2]
    model.graph.doc_string = names[0]
    path = tmp_path / "hostile.onnx"
    onnx.save(model, str(path))
    return path


# Which rotation of PAYLOADS each case starts at, and what happens: the one refused names an output "" (onnx's
# checker refuses that); every other converts, and its source and results are checked.
HOSTILE_CASES = {0: "converts", 3: "converts", 6: "converts", 9: "refused", 12: "converts", 15: "converts",
                 18: "converts"}


def test_hostile_cases_cover_every_payload_rotation():
    assert sorted(HOSTILE_CASES) == list(range(0, len(PAYLOADS), 3))


@pytest.mark.parametrize("start,outcome", sorted(HOSTILE_CASES.items()))
def test_hostile_names_never_reach_the_source(tmp_path, start, outcome):
    names = PAYLOADS[start:] + PAYLOADS[:start]
    path = _hostile_model(tmp_path, names)
    if outcome == "refused":
        with pytest.raises(ConversionError, match=re.escape(str(path)) + ": fails onnx.checker"):
            convert(path, tmp_path / "out")
        assert not os.path.exists(MARKER)
        return
    result = convert(path, tmp_path / "out")
    source = result.source_path.read_text()
    assert '"""' not in source
    tree = ast.parse(source)
    # The payloads survive only as parts of sanitized identifiers (and, sanitized, in the header comment's
    # producer field): never as a call, an attribute, an import or a string.
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert node.value.isidentifier() or node.value in {"constant", ""}, node.value
        assert not (isinstance(node, ast.Name) and node.id in ("__import__", "os", "eval", "exec")), node.id
        assert not (isinstance(node, ast.Attribute) and node.attr == "system")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            assert all((getattr(node, "module", None) or a.name).startswith("torch") for a in node.names)
    code = [line for line in source.splitlines() if not line.lstrip().startswith("#")]
    assert not any("__import__(" in line or ".system(" in line for line in code)
    module = load(path)
    assert not os.path.exists(MARKER)
    report = verify(path, module, batch_sizes=(1,))
    assert report.passed, str(report)


def test_names_that_sanitize_alike_stay_distinct(tmp_path):
    nodes = [helper.make_node("Add", ["a.b", "a-b"], ["a b"]), helper.make_node("Mul", ["a b", "a_b"], ["y"])]
    path = tmp_path / "alike.onnx"
    make_model(nodes, [tensor(n, [2]) for n in ("a.b", "a-b", "a_b")], [tensor("y", [2])], path=path)
    module = load(path)
    args = [torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0]), torch.tensor([2.0, 3.0])]
    torch.testing.assert_close(module(*args), (args[0] + args[1]) * args[2])


def _external_model(tmp_path: Path, location: str) -> Path:
    weight = numpy_helper.from_array(np.ones((2, 2), dtype=np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": "16"}.items():
        weight.external_data.add(key=key, value=value)
    del weight.float_data[:]
    weight.ClearField("raw_data")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [1, 2])], [tensor("y", [1, 2])])
    model.graph.initializer.append(weight)
    path = tmp_path / "model" / "ext.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(4, dtype=np.float32).tobytes())
    path = _external_model(tmp_path, location)
    with pytest.raises(ConversionError, match="outside the model's folder|absolute"):
        convert(path, tmp_path / "out")


def test_external_data_symlink_outside_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.ones(4, dtype=np.float32).tobytes())
    path = _external_model(tmp_path, "weights.bin")
    os.symlink(tmp_path / "secret.bin", path.parent / "weights.bin")
    with pytest.raises(ConversionError, match="outside the model's folder"):
        convert(path, tmp_path / "out")


def test_external_data_next_to_the_model_loads(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    module = load(path)
    torch.testing.assert_close(module(torch.tensor([[1.0, 1.0]])), torch.tensor([[2.0, 4.0]]))


def test_missing_external_data(tmp_path):
    with pytest.raises(ConversionError, match="missing"):
        convert(_external_model(tmp_path, "absent.bin"), tmp_path / "out")


# --- fuzzing -------------------------------------------------------------------------------------------

UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Softplus", "Identity", "Floor"]
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


@st.composite
def graphs(draw):
    rank = draw(st.integers(2, 4))
    shape = [draw(st.integers(1, 4)) for _ in range(rank)]
    input_shape = list(shape)
    nodes, inits, current, count = [], {}, "x", 0
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["unary", "binary", "transpose", "reduce", "softmax", "concat", "flatten"]))
        out = f"t{count}"
        count += 1
        if kind == "unary":
            nodes.append(helper.make_node(draw(st.sampled_from(UNARY)), [current], [out]))
        elif kind == "binary":
            const_shape = [draw(st.sampled_from([1, d])) for d in shape[-draw(st.integers(0, len(shape))):]] \
                if shape else []
            name = f"c{count}"
            inits[name] = np.asarray(draw(st.floats(-2, 2, width=32)), dtype=np.float32) * \
                np.ones(const_shape, dtype=np.float32)
            operands = [current, name] if draw(st.booleans()) else [name, current]
            nodes.append(helper.make_node(draw(st.sampled_from(BINARY)), operands, [out]))
        elif kind == "transpose":
            perm = draw(st.permutations(range(len(shape))))
            nodes.append(helper.make_node("Transpose", [current], [out], perm=list(perm)))
            shape = [shape[p] for p in perm]
        elif kind == "reduce" and len(shape) > 1:
            axis = draw(st.integers(0, len(shape) - 1))
            keep = draw(st.booleans())
            nodes.append(helper.make_node("ReduceSum", [current, f"axes{count}"], [out], keepdims=int(keep)))
            inits[f"axes{count}"] = np.array([axis], dtype=np.int64)
            shape = [d if i != axis else 1 for i, d in enumerate(shape)] if keep else \
                [d for i, d in enumerate(shape) if i != axis]
        elif kind == "softmax":
            nodes.append(helper.make_node("Softmax", [current], [out], axis=draw(st.integers(-len(shape), len(shape) - 1))))
        elif kind == "concat":
            axis = draw(st.integers(0, len(shape) - 1))
            nodes.append(helper.make_node("Concat", [current, current], [out], axis=axis))
            shape = [d * 2 if i == axis else d for i, d in enumerate(shape)]
        else:
            axis = draw(st.integers(0, len(shape)))
            nodes.append(helper.make_node("Flatten", [current], [out], axis=axis))
            left = int(np.prod(shape[:axis])) if axis else 1
            shape = [left, int(np.prod(shape[axis:]))]
        current = out
    return nodes, inits, current, input_shape


# Each fuzz test counts its own outcomes (the property runs inside the test, derandomized), so its floor holds
# under -k, xdist or any order.
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
EXAMPLES = int(os.environ.get("ZOO_FUZZ_EXAMPLES", 300))


def _fuzz_outcomes(strategy, run, tmp_path_factory, examples: int = EXAMPLES) -> dict[str, int]:
    """Runs one derandomized fuzzer and counts its outcomes in this test alone, so floors do not depend on
    which other tests ran first."""
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=examples)
    @given(strategy)
    def check(spec):
        run(tmp_path_factory, spec, outcomes)

    check()
    return outcomes


def test_fuzzed_graphs_convert_correctly_or_refuse(tmp_path_factory):
    outcomes = _fuzz_outcomes(graphs(), _fuzzed_graph, tmp_path_factory, examples=150)
    assert outcomes.get("matched", 0) >= 20, f"only {outcomes} fuzzed graphs were valid and converted"


def _fuzzed_graph(tmp_path_factory, spec, outcomes: dict[str, int]) -> None:
    nodes, inits, output, rank_shape = spec
    tmp = tmp_path_factory.mktemp("fuzz")
    model = make_model(nodes, [tensor("x", rank_shape)], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                       inits, opset=17)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception:
        return  # the drawn shapes do not fit together: not a valid model
    path = tmp / "fuzz.onnx"
    onnx.save(model, str(path))
    try:
        module = load(path)
    except ConversionError:
        return
    report = verify(path, module, batch_sizes=(rank_shape[0],))
    assert report.passed, str(report)
    _count(outcomes, "matched")


def test_mutated_model_bytes_never_escape_as_other_errors(tmp_path_factory):
    outcomes = _fuzz_outcomes(st.data(), _mutated_bytes, tmp_path_factory, examples=150)
    assert outcomes.get("refused", 0) >= 50 and outcomes.get("matched", 0) >= 5, outcomes


def _mutated_bytes(tmp_path_factory, data, outcomes: dict[str, int]) -> None:
    """Bytes of a good file overwritten or cut: a deliberate ConversionError, or a conversion that computes
    what onnxruntime computes from the same bytes."""
    tmp = tmp_path_factory.mktemp("mut")
    good = bytearray(small_convnet(tmp / "good.onnx").read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        good = good[: data.draw(st.integers(0, len(good)))]
    path = tmp / "mutated.onnx"
    path.write_bytes(bytes(good))
    try:
        convert(path, tmp / "out")
    except ConversionError as exc:
        assert str(path) in str(exc), exc
        _count(outcomes, "refused")
        return
    module = load(path)
    try:
        report = verify(path, module, batch_sizes=(1, 2))
    except Exception:  # noqa: BLE001 - onnxruntime refuses what the converter took (or verify cannot size it)
        _count(outcomes, "converted, not comparable")
        return
    assert report.passed, str(report)
    _count(outcomes, "matched")


# --- fuzzing the attributes that size allocations -----------------------------------------------------
# One node whose attributes (kernel_shape, strides, pads, group, output_padding, shape targets, repeats,
# pads amounts) and constant inputs are drawn valid, absent or hostile. The property: onnxruntime and the
# converted module agree, or conversion refuses with a deliberate ConversionError (not the catch-all
# "cannot convert" / "handler failed"); never another exception, never 10 s, never past the memory budget.

BIG = 10**9
LAYER_OPS = ["Conv", "ConvTranspose", "MaxPool", "AveragePool", "Gemm", "MatMul", "Reshape", "Expand", "Tile", "Pad",
             "Resize", "Slice", "Gather"]


@st.composite
def layer_graphs(draw):
    def pick(valid, *wild):
        """Mostly the valid value, sometimes absent (None), sometimes one of the hostile ones."""
        roll = draw(st.integers(0, 9))
        if roll < 6 or not wild:
            return valid
        return None if roll < 8 else draw(st.sampled_from(wild))

    n = draw(st.sampled_from([1, 2]))
    batch, channels = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 4]))
    spatial = [draw(st.integers(1, 7)) for _ in range(n)]
    x_shape = [batch, channels, *spatial]
    op = draw(st.sampled_from(LAYER_OPS))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    weight = lambda *shape: rng.normal(0, 0.5, shape).astype(np.float32)  # noqa: E731
    attrs, inits, inputs, out_rank = {}, {}, ["x"], len(x_shape)
    if op in ("Conv", "ConvTranspose"):
        group = pick(draw(st.sampled_from([1, channels])), 0, -1, 3, BIG)
        g = group if group in (1, channels) else 1
        kernel = [draw(st.integers(1, 3)) for _ in range(n)]
        strides = pick([draw(st.integers(1, 3)) for _ in range(n)], [0] * n, [-1] * n, [1] * (n + 1), [BIG] * n)
        attrs.update(kernel_shape=pick(kernel, [BIG] * n, [k + 1 for k in kernel], [0] * n, kernel + [1]),
                     strides=strides, dilations=pick([draw(st.integers(1, 2)) for _ in range(n)], [0] * n, [BIG] * n),
                     pads=pick([draw(st.integers(0, 2)) for _ in range(2 * n)], [-1] * (2 * n), [1] * n, [BIG] * (2 * n)),
                     group=group)
        per_group = draw(st.integers(1, 2))
        if op == "Conv":
            inits["w"] = weight(per_group * g, channels // g, *kernel)
        else:
            inits["w"] = weight(channels, per_group, *kernel)
            s = strides if isinstance(strides, list) and len(strides) == n and min(strides) >= 1 else [1] * n
            attrs["output_padding"] = pick([draw(st.integers(0, max(v - 1, 0))) for v in s], list(s), [BIG] * n,
                                           [-1] * n)
        out_ch = per_group * g
        inputs.append("w")
        if draw(st.booleans()):
            inits["b"] = weight(draw(st.sampled_from([out_ch, out_ch, out_ch + 1])))
            inputs.append("b")
    elif op in ("MaxPool", "AveragePool"):
        kernel = [draw(st.integers(1, 3)) for _ in range(n)]
        attrs.update(kernel_shape=pick(kernel, [BIG] * n, [0] * n, [-2] * n, kernel + [1]),
                     strides=pick([draw(st.integers(1, 3)) for _ in range(n)], [0] * n, [-1] * n, [BIG] * n),
                     pads=pick([draw(st.integers(0, 1)) for _ in range(2 * n)], [-1] * (2 * n), [5] * (2 * n),
                               [BIG] * (2 * n), [0] * n),
                     ceil_mode=draw(st.sampled_from([0, 0, 1])))
        if attrs["kernel_shape"] is None:
            attrs["kernel_shape"] = kernel  # required: onnx.checker refuses it missing
    elif op in ("Gemm", "MatMul"):
        k, m = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        x_shape = [batch, k] if op == "Gemm" or draw(st.booleans()) else [batch, channels, k]
        out_rank = len(x_shape)
        kb = pick(k, k + 1, 1 if k > 1 else 2)
        kb = k if kb is None else kb
        trans_b = draw(st.integers(0, 1)) if op == "Gemm" else 0
        inits["w"] = weight(*((m, kb) if trans_b else (kb, m)))
        inputs.append("w")
        if op == "Gemm":
            attrs.update(transB=trans_b, alpha=draw(st.sampled_from([1.0, 0.5])))
            if draw(st.booleans()):
                inits["b"] = weight(pick(m, m + 1, 3 * m + 1) or m)
                inputs.append("b")
    elif op in ("Reshape", "Expand", "Tile", "Pad"):
        rank = len(x_shape)
        total = int(np.prod(x_shape))
        if op == "Reshape":
            valid = draw(st.sampled_from([[batch, -1], [0, -1], [-1], [total], [0, 0, -1], x_shape[::-1]]))
            target = pick(valid, [7, 7], [BIG, BIG], [-1, -1], [-2, 4], [0] * 6, [total + 1], [0, BIG, -1])
        elif op == "Expand":
            valid = [d if draw(st.booleans()) else 1 for d in x_shape]
            if draw(st.booleans()):
                valid = [2] + valid
            target = pick(valid, [BIG] * rank, [3] * rank, [-1] * rank, [BIG, *x_shape])
        elif op == "Tile":
            target = pick([draw(st.integers(1, 2)) for _ in range(rank)], [BIG] * rank, [-1] * rank, [1] * (rank - 1),
                          [1, 1, BIG, BIG][:rank])
        else:
            valid = [draw(st.integers(0, 2)) for _ in range(2 * rank)]
            valid[-1] = -1 if x_shape[-1] > 1 and draw(st.booleans()) else valid[-1]
            target = pick(valid, [BIG] * (2 * rank), [1] * 3, [-100] * (2 * rank), [0, 0, BIG, BIG, 0, 0, BIG, BIG][:2 * rank])
            attrs["mode"] = draw(st.sampled_from(["constant", "constant", "reflect", "edge"]))
        target = [1] * rank if target is None else target
        inits["t"] = np.array(target, dtype=np.int64)
        inputs.append("t")
        out_rank = len(target) if op == "Reshape" else max(rank, len(target)) if op == "Expand" else rank
    elif op == "Resize":
        rank = len(x_shape)
        valid = [1.0, 1.0] + [draw(st.sampled_from([0.5, 1.0, 2.0, 3.0])) for _ in range(n)]
        scales = pick(valid, [1.0, 1.0] + [1e6] * n, [1.0, 1.0] + [-2.0] * n, [1.0, 1.0] + [0.0] * n,
                      [1.0, 1.0] + [float("nan")] * n, [2.0] * n)
        inits["s"] = np.array(valid if scales is None else scales, dtype=np.float32)
        inputs += ["", "s"]
        attrs.update(mode=draw(st.sampled_from(["nearest", "linear"])),
                     coordinate_transformation_mode=draw(st.sampled_from(["asymmetric", "half_pixel"])),
                     nearest_mode="floor")
    elif op == "Slice":
        rank = len(x_shape)
        axis = draw(st.integers(-rank, rank - 1))
        starts = pick([draw(st.integers(-3, 3))], [BIG], [-BIG])
        ends = pick([draw(st.integers(-3, 8))], [BIG], [-BIG])  # (ends=INT64_MAX with a negative step: onnxruntime
        # returns one element where the ONNX reference returns none)
        steps = pick([draw(st.sampled_from([1, 2, -1, -2]))], [0], [BIG], [-BIG])
        axes = pick([axis], [rank + 3], [axis, axis])
        for key, value in (("starts", starts or [0]), ("ends", ends or [BIG]), ("axes", axes or [axis]),
                           ("steps", steps or [1])):
            inits[key] = np.array(value, dtype=np.int64)
            inputs.append(key)
    elif op == "Gather":
        axis = pick(draw(st.integers(0, len(x_shape) - 1)), len(x_shape) + 2, -len(x_shape) - 3)
        attrs["axis"] = axis
        size = x_shape[axis] if isinstance(axis, int) and -len(x_shape) <= axis < len(x_shape) else 1
        indices = pick([draw(st.integers(-size, size - 1)) for _ in range(draw(st.integers(1, 3)))], [size], [BIG],
                       [-size - 1])
        inits["i"] = np.array(indices or [0], dtype=np.int64)
        inputs.append("i")
    if "w" in inits and draw(st.integers(0, 9)) == 0:  # a mutated initializer: NaN/Inf values or another dtype
        mutation = draw(st.sampled_from(["nan", "inf", "float64", "float16"]))
        if mutation in ("nan", "inf"):
            inits["w"].reshape(-1)[0] = float(mutation)
        else:
            inits["w"] = inits["w"].astype(mutation)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    node = helper.make_node(op, inputs, ["y"], name=f"fuzz_{op.lower()}", **attrs)
    return op, node, inits, x_shape, out_rank


class _AddressSpaceCap:
    """Cap this process's address space at its current size plus ``extra`` bytes for a block, so that an
    allocation beyond the budget fails (MemoryError) instead of taking the machine down."""

    def __init__(self, extra: int):
        self.extra = extra

    def __enter__(self):
        import resource

        self.old = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = current + self.extra
        if self.old[1] != resource.RLIM_INFINITY:
            cap = min(cap, self.old[1])
        resource.setrlimit(resource.RLIMIT_AS, (cap, self.old[1]))
        return self

    def __exit__(self, *exc):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, self.old)


def _output_elements(model: onnx.ModelProto) -> int | None:
    """The output's element count by onnx shape inference (None: inference refuses the graph)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception:
        return None  # onnxruntime refuses what strict inference refuses, before allocating
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return None if None in values else int(np.prod(values, dtype=object))


def _count(outcomes: dict[str, int], key: str) -> None:
    outcomes[key] = outcomes.get(key, 0) + 1


def _faithful_or_refused(model: onnx.ModelProto, path: Path, x_shape: list[int], label: str,
                         outcomes: dict[str, int], compare_values: bool = True) -> None:
    """The fuzzers' property: ``load`` gives a module that agrees with onnxruntime, or refuses with a
    deliberate ConversionError naming the file; within 10 s and the memory budget either way."""
    import time

    import onnxruntime as ort

    start = time.monotonic()
    try:
        with _AddressSpaceCap(1 << 30):  # conversion may allocate no more than the memory budget
            module = load(path)
    except ConversionError as exc:
        message = str(exc)
        assert "cannot convert (" not in message and "handler failed" not in message, message
        assert str(path) in message, message
        _count(outcomes, "refused")
        module = None
    # Only catches a hang: a refusal or conversion of one node takes well under a second.
    assert time.monotonic() - start < 120, f"{label}: conversion took {time.monotonic() - start:.1f} s"
    if module is None:
        return
    x = np.random.default_rng(0).normal(size=x_shape).astype(np.float32)
    elements = _output_elements(model)
    if elements is not None and elements > 1 << 20:  # too big to run here; conversion must still be in budget
        assert elements * 4 <= memory_budget(), f"{label}: converted a node whose output is {elements} elements"
        _count(outcomes, "converted, too big to run")
        return
    try:
        with _AddressSpaceCap(2 << 30):
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        # onnxruntime does not run this opset at all, or has no kernel for this op version (Gemm-1): nothing to
        # compare with
        if re.search(r"opset|Opset|Could not find an implementation", str(exc)):
            _count(outcomes, "converted, opset onnxruntime does not run")
            return
        session = None
    try:
        if session is None:
            raise RuntimeError("onnxruntime refused the graph")
        with _AddressSpaceCap(2 << 30):
            expected = session.run(None, {"x": x})[0]
    except Exception:
        # The converter generalizes the batch, so a graph may be valid at other batch sizes than the traced
        # one; then the module must refuse this input at run time just as onnxruntime does.
        with torch.no_grad(), _AddressSpaceCap(2 << 30), pytest.raises(Exception):
            module(torch.from_numpy(x))
        _count(outcomes, "refused at run time")
        return
    with torch.no_grad(), _AddressSpaceCap(2 << 30):
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape, (label, got.shape, expected.shape)
    assert got.dtype == expected.dtype, (label, got.dtype, expected.dtype)
    if compare_values:
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, equal_nan=True)
    _count(outcomes, "matched")


def test_fuzzed_layer_attributes_convert_faithfully_or_refuse(tmp_path_factory):
    outcomes = _fuzz_outcomes(layer_graphs(), _fuzzed_layer, tmp_path_factory)
    assert outcomes.get("matched", 0) >= 40 and outcomes.get("refused", 0) >= 40, outcomes


def _fuzzed_layer(tmp_path_factory, spec, outcomes: dict[str, int]) -> None:
    op, node, inits, x_shape, out_rank = spec
    tmp = tmp_path_factory.mktemp("layer")
    model = make_model([node], [tensor("x", x_shape)], [tensor("y", [f"d{i}" for i in range(out_rank)])], inits,
                       opset=17)
    path = tmp / "layer.onnx"
    onnx.save(model, str(path))
    # (with a NaN or Inf weight only the shape is compared: how NaN meets padding differs between kernels)
    finite = all(np.isfinite(v).all() for v in inits.values() if v.dtype.kind == "f")
    _faithful_or_refused(model, path, x_shape, op, outcomes, compare_values=finite)


# --- fuzzing initializers and opset imports -----------------------------------------------------------
# A layer graph as above (or a MatMul whose weight is big enough for the wire-format reader), then one
# mutation of the file: an initializer re-encoded in another dtype, relabelled with another data_type over
# the same bytes, given raw_data of the wrong length, or NaN/Inf values; the default opset import missing,
# too old or too new; an unknown domain imported or used. Same property as above.

INIT_MUTATIONS = ["astype", "relabel", "raw_length", "nonfinite"]
OPSET_MUTATIONS = ["no_opset", "old_opset", "new_opset", "unknown_domain_node", "unknown_domain_import"]
DTYPES = [TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.INT32, TensorProto.INT8,
          TensorProto.UINT8, TensorProto.BOOL, TensorProto.BFLOAT16, TensorProto.STRING]


@st.composite
def mutated_models(draw):
    if draw(st.integers(0, 4)) == 0:  # > loader.SMALL_TENSOR elements: read by the wire-format walker
        k, m = draw(st.integers(33, 48)), draw(st.integers(32, 40))
        x_shape, out_rank = [draw(st.integers(1, 2)), k], 2
        inits = {"w": np.random.default_rng(k * m).normal(0, 0.2, (k, m)).astype(np.float32)}
        op, node = "MatMul", helper.make_node("MatMul", ["x", "w"], ["y"], name="fuzz_big_matmul")
    else:
        op, node, inits, x_shape, out_rank = draw(layer_graphs())
    model = make_model([node], [tensor("x", x_shape)], [tensor("y", [f"d{i}" for i in range(out_rank)])], inits,
                       opset=17)
    mutation = draw(st.sampled_from(INIT_MUTATIONS + OPSET_MUTATIONS if model.graph.initializer else OPSET_MUTATIONS))
    label = f"{op}/{mutation}"
    if mutation in INIT_MUTATIONS:
        t = model.graph.initializer[draw(st.integers(0, len(model.graph.initializer) - 1))]
        array = numpy_helper.to_array(t)
        if mutation == "astype":
            dtype = draw(st.sampled_from([np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8, np.bool_]))
            t.CopyFrom(numpy_helper.from_array(array.astype(dtype), t.name))
        elif mutation == "relabel":
            t.data_type = draw(st.sampled_from([d for d in DTYPES if d != t.data_type]))
        elif mutation == "raw_length":
            raw = t.raw_data or array.tobytes()
            t.ClearField("float_data")
            t.ClearField("int64_data")
            cut = draw(st.integers(1, max(1, len(raw))))
            t.raw_data = raw[:-cut] if draw(st.booleans()) else raw + bytes(draw(st.integers(1, 9)))
        else:
            if array.dtype.kind != "f":
                array = array.astype(np.float32)
            flat = array.reshape(-1).copy()
            for _ in range(draw(st.integers(1, 3))):
                if flat.size:
                    flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            t.CopyFrom(numpy_helper.from_array(flat.reshape(array.shape), t.name))
        label += f"({t.name})"
    elif mutation == "no_opset":
        del model.opset_import[:]
    elif mutation in ("old_opset", "new_opset"):
        version = draw(st.sampled_from([1, 5, 6, 7, 9]) if mutation == "old_opset" else
                       st.sampled_from([onnx.defs.onnx_opset_version() + 1, 99, 2**31 - 1, 2**62]))
        model.opset_import[0].version = version
        label += f"={version}"
    else:
        domain = draw(st.sampled_from(["com.evil", "ai.onnx.ml", "com.microsoft", "x'); import os #"]))
        model.opset_import.append(helper.make_opsetid(domain, draw(st.sampled_from([1, 99]))))
        if mutation == "unknown_domain_node":
            model.graph.node[0].domain = domain
        label += f"({domain!r})"
    return label, model, x_shape, inits


def test_fuzzed_initializers_and_opsets_convert_faithfully_or_refuse(tmp_path_factory):
    outcomes = _fuzz_outcomes(mutated_models(), _fuzzed_mutation, tmp_path_factory)
    # Most mutations make a file no runtime should accept, so refusals dominate (derandomized: 285 refused and
    # 15 matched of 300 with hypothesis 6.170).
    assert outcomes.get("matched", 0) >= 10 and outcomes.get("refused", 0) >= 100, outcomes


def _fuzzed_mutation(tmp_path_factory, spec, outcomes: dict[str, int]) -> None:
    label, model, x_shape, inits = spec
    path = tmp_path_factory.mktemp("mutated") / "mutated.onnx"
    path.write_bytes(model.SerializeToString())
    finite = all(np.isfinite(numpy_helper.to_array(t)).all() for t in model.graph.initializer
                 if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16) and
                 _readable(t)) and all(np.isfinite(v).all() for v in inits.values() if v.dtype.kind == "f")
    _faithful_or_refused(model, path, x_shape, label, outcomes, compare_values=finite)


def _readable(t: TensorProto) -> bool:
    try:
        numpy_helper.to_array(t)
        return True
    except Exception:
        return False



# --- kill -9 during a build ---------------------------------------------------------------------------

BUILD_JOB = """
import sys
from pathlib import Path
from zoo.publish.build import Options, build
build(Options(out=Path(sys.argv[1]), offline=True, models_dir=Path(sys.argv[2]), registry=Path(sys.argv[3]),
              names=[sys.argv[4]]))
"""


def _installed_state(out: Path, models: Path, name: str, old_source: bytes) -> str:
    """'old' or 'new' when the source and the output folder belong together and every file reads whole."""
    import hashlib
    import json

    from safetensors import safe_open

    source = (models / f"{name}.py").read_bytes()
    ast.parse(source)
    stamp = json.loads((out / name / "build.json").read_text())
    assert stamp["source_py_sha256"] == hashlib.sha256(source).hexdigest(), "a source beside another build's folder"
    weights = out / name / "model.safetensors"
    assert stamp["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest(), "half-written weights"
    with safe_open(str(weights), "pt") as f:
        assert len(list(f.keys())) > 10
    json.loads((out / name / "config.json").read_text())
    return "old" if source == old_source else "new"


@pytest.mark.parametrize("sweep", ["sampled", pytest.param("every", marks=pytest.mark.slow)])
def test_a_build_killed_with_sigkill_leaves_each_model_old_or_new(tmp_path, sweep):
    """SIGKILL (no exception, no finally) a build in a child process before a change to the output (each change
    in turn in the slow tier; the first, the last, both sides of each rename and a seeded few otherwise): after
    recovery the model's source and output folder are the old pair or the new pair, whole; the next run
    completes."""
    import shutil

    import yaml

    from zoo.publish.build import Options, build, recover
    from zoo.registry import DEFAULT_REGISTRY

    name = "squeezenet1_1"
    out, models = tmp_path / "out", tmp_path / "models"
    build(Options(out=out, offline=True, models_dir=models, names=[name]))  # the old state
    old_source = (models / f"{name}.py").read_bytes()
    shutil.copytree(out, tmp_path / "old-out")
    shutil.copytree(models, tmp_path / "old-models")
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    data["models"][name]["source"]["file"] = "squeezenet-renamed.onnx"  # changes the generated header
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(data))

    def restore_old():
        shutil.rmtree(out)
        shutil.rmtree(models)
        shutil.copytree(tmp_path / "old-out", out)
        shutil.copytree(tmp_path / "old-models", models)

    root = Path(__file__).resolve().parents[1]
    argv = (out, models, registry, name)
    with KillRunner(BUILD_JOB, [out, models], scratch="/.build-", cwd=root) as runner:
        clean = runner.run(0, *argv)  # not killed: it counts and lists its changes
        assert clean.returncode == 0, clean.stderr[-2000:]
        assert _installed_state(out, models, name, old_source) == "new"
        changes = changes_listed(clean.stderr)
        assert len(changes) == changes_counted(clean.stderr) > 10
        points = range(1, len(changes) + 1) if sweep == "every" else kill_points(changes)
        outcomes = []
        for kill_at in points:
            restore_old()  # each kill interrupts a real install of the new pair over the old one
            child = runner.run(kill_at, *argv)
            assert child.returncode == -9, (kill_at, child.stderr[-2000:])
            recover(out)
            outcomes.append(_installed_state(out, models, name, old_source))
            assert not [p for p in out.iterdir() if p.name.startswith(".")], sorted(p.name for p in out.iterdir())
        # the next run after the last kill completes and installs the new pair
        assert runner.run(0, *argv).returncode == 0
    assert _installed_state(out, models, name, old_source) == "new"
    # Kills before the commit point roll back to the old pair, kills after it roll forward to the new one.
    assert outcomes[0] == "old" and "new" in outcomes, outcomes
    assert outcomes == sorted(outcomes, key=["old", "new"].index), outcomes  # one switch, at the commit
    print(f"{sweep}: killed at {list(points)} of {len(changes)} changes: {outcomes}")
    again = build(Options(out=out, offline=True, models_dir=models, registry=registry, names=[name]))
    assert again[0].status == "skipped"  # the killed runs left nothing that makes the finished one look stale
    assert b"squeezenet-renamed.onnx" in (models / f"{name}.py").read_bytes()
    assert sorted(p.name for p in models.iterdir()) == ["__init__.py", f"{name}.py"]  # no staged or temporary file
