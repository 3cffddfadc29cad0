"""Resize, MaxPool indices and MaxUnpool in segmentation-style graphs (batch and channels > 1, constant
scales), against onnxruntime; the conformance cases are single-channel and feed scales at run time."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from zoo.convert import convert, load

from .helpers import assert_outputs_match, make_model, run_onnxruntime, tensor

RNG = np.random.default_rng(0)


def _decoder(path, resize_attrs, scales=None, sizes=None):
    """conv -> Resize (constant scales or sizes) -> conv, as a segmentation decoder upsamples features."""
    inits = {"w1": RNG.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32),
             "w2": RNG.normal(0, 0.3, (2, 6, 1, 1)).astype(np.float32)}
    inputs = ["f", ""]
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        inputs.append("scales")
    else:
        inits["sizes"] = np.array(sizes, np.int64)
        inputs += ["", "sizes"]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["f"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", inputs, ["u"], **resize_attrs),
             helper.make_node("Conv", ["u", "w2"], ["y"])]
    make_model(nodes, [tensor("x", ["N", 3, 7, 9])], [tensor("y", ["N", 2, None, None])], inits, opset=19, path=path)
    return path


CASES = [
    ({"mode": "nearest"}, [1, 1, 2, 2], None, None),  # ONNX's defaults: half_pixel, round_prefer_floor
    # An integral output length: onnxruntime divides by the output size, ONNX's reference by scale * size.
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [1, 1, 2, 2], None, "F.interpolate("),
    ({"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, None, [2, 6, 12, 20], None),
    ({"mode": "linear", "antialias": 1}, [1, 1, 0.5, 0.6], None, None),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, [1, 1, 2, 3], None, "F.interpolate("),
]


@pytest.mark.parametrize("attrs,scales,sizes,needle", CASES, ids=[str(c[0]) for c in CASES])
def test_resize_in_a_decoder_matches_onnxruntime_and_trains(tmp_path, attrs, scales, sizes, needle):
    path = _decoder(tmp_path / "decoder.onnx", attrs, scales, sizes)
    x = RNG.standard_normal((2, 3, 7, 9)).astype(np.float32)
    expected = run_onnxruntime(path, {"x": x})[0]
    module = load(path)
    inp = torch.from_numpy(x).requires_grad_()
    got = module(inp)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    got.square().sum().backward()
    assert inp.grad is not None and inp.grad.abs().sum() > 0
    if needle:
        assert needle in convert(path, tmp_path / "out").source_path.read_text()


def test_maxpool_indices_feed_maxunpool_across_batch_and_channels(tmp_path):
    """SegNet's encoder-decoder: MaxPool's Indices count across the whole tensor, and MaxUnpool reads them so."""
    nodes = [helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxUnpool", ["p", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    path = tmp_path / "segnet.onnx"
    make_model(nodes, [tensor("x", [2, 3, 6, 8])], [tensor("y", [2, 3, 6, 8]), tensor("i", [2, 3, 3, 4], TensorProto.INT64)],
               opset=12, path=path)
    x = RNG.standard_normal((2, 3, 6, 8)).astype(np.float32)
    expected = run_onnxruntime(path, {"x": x})
    with torch.no_grad():
        got = load(path)(torch.from_numpy(x))
    assert_outputs_match(got, expected, rtol=1e-7, atol=0)
