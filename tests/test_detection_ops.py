"""NonMaxSuppression, RoiAlign and the integer ops of dynamically quantized graphs, against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from zoo.convert import load

from .helpers import make_model, run_onnxruntime, tensor

RNG = np.random.default_rng(0)


def _run(path, feeds):
    expected = run_onnxruntime(path, feeds)[0]
    with torch.no_grad():
        got = load(path)(*[torch.from_numpy(v) for v in feeds.values()])
    return got.numpy(), expected


@pytest.mark.parametrize("center", [0, 1])
def test_non_max_suppression(tmp_path, center):
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "limit", "iou", "min_score"], ["selected"],
                            center_point_box=center)
    path = tmp_path / "nms.onnx"
    make_model([node], [tensor("boxes", [2, 40, 4]), tensor("scores", [2, 3, 40])],
               [tensor("selected", [None, 3], TensorProto.INT64)],
               {"limit": np.array([7]), "iou": np.array([0.4], np.float32), "min_score": np.array([0.2], np.float32)},
               path=path)
    corners = RNG.uniform(0, 10, (2, 40, 4)).astype(np.float32)  # x1 > x2 happens: ONNX allows either order
    scores = RNG.uniform(0, 1, (2, 3, 40)).astype(np.float32)
    got, expected = _run(path, {"boxes": corners, "scores": scores})
    assert len(expected) > 10
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mode", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align(tmp_path, mode, sampling_ratio):
    node = helper.make_node("RoiAlign", ["x", "rois", "index"], ["y"], output_height=3, output_width=4,
                            sampling_ratio=sampling_ratio, spatial_scale=0.5, coordinate_transformation_mode=mode)
    path = tmp_path / "roi.onnx"
    make_model([node], [tensor("x", [2, 3, 10, 12]), tensor("rois", [5, 4]), tensor("index", [5], TensorProto.INT64)],
               [tensor("y", [5, 3, 3, 4])], opset=16, path=path)
    x = RNG.standard_normal((2, 3, 10, 12)).astype(np.float32)
    start = RNG.uniform(-6, 16, (5, 2))
    rois = np.concatenate([start, start + RNG.uniform(1, 14, (5, 2))], 1).astype(np.float32)  # some off the map
    got, expected = _run(path, {"x": x, "rois": rois, "index": np.array([0, 1, 1, 0, 1])})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_dynamically_quantized_matmul(tmp_path):
    """DynamicQuantizeLinear then MatMulInteger with per-column weight zero points, as onnxruntime's
    dynamic quantization writes a Linear layer."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"]),
             helper.make_node("MatMulInteger", ["q", "w", "zero", "w_zero"], ["y"])]
    path = tmp_path / "qmm.onnx"
    make_model(nodes, [tensor("x", [4, 6])], [tensor("y", [4, 5], TensorProto.INT32)],
               {"w": RNG.integers(0, 255, (6, 5)).astype(np.uint8),
                "w_zero": RNG.integers(100, 150, (5,)).astype(np.uint8)}, opset=13, path=path)
    got, expected = _run(path, {"x": RNG.standard_normal((4, 6)).astype(np.float32)})
    np.testing.assert_array_equal(got, expected)
