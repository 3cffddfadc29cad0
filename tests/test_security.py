"""Hostile and broken inputs: no code injection, no reads outside the model folder, fuzzed graphs and bytes."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from zoo.convert import ConversionError, convert, load, verify

from .helpers import make_model, small_convnet, tensor

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
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", [inp, w, b], [c], name=next(n), pads=[1, 1, 1, 1], doc_string=next(n)),
        helper.make_node("Relu", [c], [r], name=next(n)),
        helper.make_node("Pad", [r, "pads_" + next(n)], [out + "_pad"], name=next(n), mode="constant"),
        helper.make_node("Mul", [out + "_pad", w2], [out], name=next(n)),
    ]
    inits = {w: rng.normal(size=(2, 3, 3, 3)).astype(np.float32), b: rng.normal(size=(2,)).astype(np.float32),
             "pads_" + names[0]: np.array([0, 0, 0, 0, 0, 0, 0, 0], dtype=np.int64),
             w2: rng.normal(size=(1, 2, 1, 1)).astype(np.float32)}
    model = make_model(nodes, [tensor(inp, [1, 3, 5, 5])], [tensor(out, [1, 2, 5, 5])], inits,
                       name=names[0] or "g", producer_name=names[1])
    model.doc_string = names[2]
    model.graph.doc_string = names[0]
    path = tmp_path / "hostile.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("start", range(0, len(PAYLOADS), 3))
def test_hostile_names_never_reach_the_source(tmp_path, start):
    names = PAYLOADS[start:] + PAYLOADS[:start]
    path = _hostile_model(tmp_path, names)
    try:
        result = convert(path, tmp_path / "out")
    except ConversionError:
        return  # refusing is allowed; running or emitting the payload is not
    source = result.source_path.read_text()
    assert "__import__" not in source and "system" not in source and '"""' not in source
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert node.value.isidentifier() or node.value in {"constant", ""}, node.value
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


CONVERTED = []


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(graphs(), st.data())
def test_fuzzed_graphs_convert_correctly_or_refuse(tmp_path_factory, spec, data):
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
    CONVERTED.append(len(nodes))


def test_fuzzing_exercised_the_converter():
    assert len(CONVERTED) >= 20, f"only {len(CONVERTED)} fuzzed graphs were valid and converted"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_model_bytes_never_escape_as_other_errors(tmp_path_factory, data):
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
    except ConversionError:
        pass
