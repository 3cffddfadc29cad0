"""Files as real exporters write them: ranks onnx inference loses, negative-step Slice, torchvision's
shufflenet_v2_x1_0 and swin_t at opset 17 with a dynamic batch."""
from __future__ import annotations

import inspect

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from zoo.convert import ConversionError, load, verify
from zoo.convert import shapes

from .helpers import export_and_compare, make_model, tensor


def _lost_rank_model(path):
    """Reshape to a target whose length onnx cannot tell (float arithmetic on Shape), then a Transpose
    that needs the rank."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sf", "one"], ["sf1"]),
        helper.make_node("Cast", ["sf1"], ["s2"], to=TensorProto.INT64),
        helper.make_node("Slice", ["s2", "i1", "i2"], ["three"]),
        helper.make_node("Sub", ["three", "i1"], ["end"]),
        helper.make_node("Slice", ["s2", "i0", "end"], ["keep"]),
        helper.make_node("Concat", ["keep", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Transpose", ["r"], ["y"]),
    ]
    inits = {"one": np.array(1.0, np.float32), "i0": np.array([0]), "i1": np.array([1]), "i2": np.array([2]),
             "minus1": np.array([-1])}
    make_model(nodes, [tensor("x", ["batch", 3, 4, 5])], [tensor("y", [None, None, None])], inits, path=path)
    return path


def test_rank_lost_by_onnx_inference_comes_from_the_probe(tmp_path):
    path = _lost_rank_model(tmp_path / "lost.onnx")
    inferred = onnx.shape_inference.infer_shapes(onnx.load(path), data_prop=True)
    assert "r" not in {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.HasField("shape")}
    module = load(path)
    assert verify(path, module, batch_sizes=(1, 3)).passed
    assert module(torch.randn(2, 3, 4, 5)).shape == (20, 3, 2)


def test_without_probe_or_symbolic_inference_the_rank_stays_unknown(tmp_path, monkeypatch):
    path = _lost_rank_model(tmp_path / "lost.onnx")
    monkeypatch.setattr(shapes, "probe", lambda *a: None)
    monkeypatch.setattr(shapes, "symbolic_infer", lambda *a: None)
    with pytest.raises(ConversionError, match="Transpose.*rank of input 0 is unknown"):
        load(path)


def test_probe_tells_constant_sizes_from_batch_and_free_sizes(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = make_model(nodes, [tensor("x", ["batch", 3, "h", 7])], [tensor("y", ["batch", 3, "h", 7])])
    found = shapes.probe(model, ["x"], ["y"], {})
    assert found["y"][0] == ("batch", 3, None, 7)


@pytest.mark.parametrize("starts,ends,steps,expected", [
    ([-1], [-2**63 + 1], [-1], "x.flip(3)"),            # x[..., ::-1] as torch.onnx.export writes it
    ([4], [0], [-2], "x.flip(3)[:, :, :, 1:5:2]"),
    ([100], [-100], [-1], "x.flip(3)[:, :, :, :6]"),    # clamped to the whole axis
    ([-100], [-200], [-1], "x.flip(3)[:, :, :, 5:6]"),  # start clamps to 0: one element
])
def test_negative_step_slice(tmp_path, starts, ends, steps, expected):
    inits = {"s": np.array(starts), "e": np.array(ends), "a": np.array([3]), "p": np.array(steps)}
    path = tmp_path / "flip.onnx"
    make_model([helper.make_node("Slice", ["x", "s", "e", "a", "p"], ["y"])],
               [tensor("x", ["batch", 2, 3, 6])], [tensor("y", [None] * 4)], inits, path=path)
    module = load(path)
    assert verify(path, module).passed
    assert inspect.getsource(type(module).forward).splitlines()[-1].strip() == f"return {expected}"


def test_negative_step_slice_on_a_dynamic_axis_computes_bounds_at_run_time(tmp_path):
    inits = {"s": np.array([-2]), "e": np.array([0]), "a": np.array([2]), "p": np.array([-1])}
    path = tmp_path / "flip.onnx"
    make_model([helper.make_node("Slice", ["x", "s", "e", "a", "p"], ["y"])],
               [tensor("x", ["batch", 2, "w"])], [tensor("y", [None] * 3)], inits, path=path)
    module = load(path)
    x = torch.randn(2, 2, 9)
    torch.testing.assert_close(module(x), x[:, :, 1:8].flip(2))


@pytest.mark.parametrize("arch", ["shufflenet_v2_x1_0", "swin_t"])
def test_torchvision_export_with_lost_shapes(arch, tmp_path):
    export_and_compare(arch, tmp_path / f"{arch}.onnx", 17, batch_sizes=(1, 3))


def _two_big_layers(path, size=4096):
    """Two size x size fully-connected layers: 2 * 64 MB of float32 weights at the default size."""
    rng = np.random.default_rng(0)
    inits = {f"w{i}": rng.standard_normal((size, size), dtype=np.float32) for i in (1, 2)}
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    make_model(nodes, [tensor("x", ["batch", size])], [tensor("y", ["batch", size])], inits, path=path)
    return path


def test_big_weights_are_read_straight_into_arrays(tmp_path):
    from zoo.convert.loader import load_model, sha256_of

    path = _two_big_layers(tmp_path / "fc.onnx", size=256)
    apart, whole = load_model(path), load_model(path, weights_apart=False)
    assert set(apart.weights) == {"w1", "w2"} and not apart.proto.graph.initializer
    assert apart.sha256 == whole.sha256 == sha256_of(path)
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in whole.proto.graph.initializer}
    assert all(np.array_equal(apart.weights[k], expected[k]) for k in expected)
    assert verify(path, load(path)).passed


def test_a_file_cut_short_is_still_a_clear_error(tmp_path):
    path = _two_big_layers(tmp_path / "fc.onnx", size=256)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="fc.onnx: not a readable ONNX model"):
        load(path)
