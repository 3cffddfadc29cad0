"""The ONNX model zoo's opset-9 graphs, rebuilt with random weights, against onnxruntime.

Parametrized over the registry: the modules are the ones the offline build generated (one build per run,
shared through conftest's session fixtures), checked here at other batch sizes than the build's own check.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from zoo.convert import convert, load, verify

from .conftest import ZOO_GRAPHS, ZOO_MODELS


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_matches_onnxruntime_at_batch_1_and_5(cut_standins, built_modules, name):
    report = verify(cut_standins[name], built_modules[name], batch_sizes=(1, 5))
    assert report.passed, str(report)
    assert [c.batch_size for c in report.comparisons] == [1, 5]
    assert all(c.max_ref > 1e-3 for c in report.comparisons), "reference is degenerate"
    assert report.worst <= 1e-4


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_any_batch_size_gives_per_sample_results(built_modules, name):
    module = built_modules[name]
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        together = module(x)
        alone = torch.cat([module(x[i:i + 1]) for i in range(3)])
    assert together.shape == (3, 1000)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4 * alone.abs().max().item())


def _source(standins, graph, tmp_path, structure=False):
    """Flat by default: these tests count the op-level layers each graph lowers to."""
    return convert(standins[graph], tmp_path, name=graph, outputs=[ZOO_GRAPHS[graph]],
                   structure=structure).source_path.read_text()


def test_densenet_batchnorm_and_scale_fold_into_one_layer(standins, tmp_path):
    src = _source(standins, "densenet121", tmp_path)
    assert src.count("nn.BatchNorm2d(") == 121
    assert "unsqueeze" not in src and " * " not in src
    assert "self.conv1_bn = nn.BatchNorm2d(64)" in src


def test_resnet_reshape_to_batch_one_becomes_flatten(standins, tmp_path):
    src = _source(standins, "resnet50", tmp_path)
    assert "torch.flatten(" in src and "reshape" not in src
    assert "self.pred = nn.Linear(2048, 1000)" in src
    assert src.count(" + ") == 16  # the Caffe2 Sum of each residual block


def test_googlenet_asymmetric_average_pool_and_lrn(standins, tmp_path):
    src = _source(standins, "inception_v1", tmp_path)
    assert "nn.AvgPool2d(kernel_size=7, stride=1, padding=1, count_include_pad=False)" in src
    assert "[:, :, 1:, 1:]" in src
    assert src.count("nn.LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=1.0)") == 2
    assert "nn.Dropout(p=0.4)" in src
    assert "self.loss3_classifier = nn.Linear(1024, 1000)" in src


def test_squeezenet_reads_like_torchvision(standins, tmp_path):
    src = _source(standins, "squeezenet", tmp_path, structure=True)
    assert "self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2)" in src
    assert "self.fire2 = Fire(64, 16, 64)" in src
    assert "self.expand3x3 = nn.Conv2d(squeeze1x1, expand1x1, kernel_size=3, padding=1)" in src
    assert "self.conv10 = nn.Conv2d(512, 1000, kernel_size=1)" in src
    forward = src[src.index("def forward"):]
    assert "x = self.maxpool(torch.relu(self.conv1(x)))" in forward  # the input is `x`, as in torchvision
    assert "#   x is the ONNX input data_0\n" in src  # the ONNX name stays in the header
    assert max(len(line) for line in src.splitlines()) <= 120
    assert len(forward.splitlines()) < 40


def test_softmax_before_opset_13_flattens(standins):
    # Uncut, SqueezeNet ends in Softmax over (N, 1000, 1, 1) with the opset-9 coercion to 2-d.
    module = load(standins["squeezenet"])
    report = verify(standins["squeezenet"], module, batch_sizes=(1, 2))
    assert report.passed, str(report)
    with torch.no_grad():
        probs = module(torch.randn(2, 3, 224, 224))
    torch.testing.assert_close(probs.sum(dim=1).flatten(), torch.ones(2))


def test_generated_code_does_not_depend_on_weight_values(tmp_path):
    from zoo.publish.standins import build_standin

    sources = []
    for seed in (1, 2):
        path = build_standin("inception_v1", tmp_path / f"s{seed}" / "googlenet-9.onnx", seed=seed)
        result = convert(path, tmp_path / f"out{seed}", name="googlenet", outputs=["r143"],
                         source_name="googlenet-9.onnx", source_sha256="0" * 64)
        sources.append(result.source_path.read_bytes())
    assert sources[0] == sources[1]
    assert re.search(rb"sha256 0{64}", sources[0])


def test_shufflenet_channel_shuffles_read_as_shuffles(standins, tmp_path):
    src = _source(standins, "shufflenet", tmp_path)
    assert "def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:" in src  # typed: it must script
    assert src.count("channel_shuffle(y, 4)") == 16  # one per ShuffleNet unit, as the graph's 16 Transposes
    assert "reshape" not in src and "permute" not in src
    assert "self.pred = nn.Linear(544, 1000)" in src


def _shuffle_graph(tmp_path, perm=(0, 2, 1, 3, 4), split=(1, 2, 4, 5, 5), merge=(1, 8, 5, 5)):
    """Conv (8 channels) then a channel shuffle of 2 groups, fixed at batch 1 as Caffe2 exported them."""

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(split, dtype=np.int64), "split"),
             numpy_helper.from_array(np.array(merge, dtype=np.int64), "merge")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "split"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=list(perm)),
             helper.make_node("Reshape", ["t", "merge"], ["y"])]
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 5, 5])], inits)
    path = tmp_path / "shuffle.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]), str(path))
    return path


def test_channel_shuffle_generalizes_to_any_batch_size(tmp_path):
    path = _shuffle_graph(tmp_path)
    src = convert(path, tmp_path / "out", name="shuffle").source_path.read_text()
    assert "channel_shuffle(self.conv(x), 2)" in src and "reshape" not in src
    module = load(path)
    report = verify(path, module, batch_sizes=(1, 5))
    assert report.passed and report.comparisons[1].per_sample_reference, str(report)
    x = torch.randn(4, 3, 5, 5)
    with torch.no_grad():
        c = module.conv(x)
        got = module(x)
    # channel k of group g moves to position k * groups + g
    expected = torch.stack([c[:, 0], c[:, 4], c[:, 1], c[:, 5], c[:, 2], c[:, 6], c[:, 3], c[:, 7]], dim=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [
    {"perm": (0, 1, 2, 4, 3)},                          # swaps H and W, not the groups
    {"split": (1, 2, 4, 25, 1), "merge": (1, 8, 5, 5)},  # regroups the pixels
])
def test_other_reshape_transpose_chains_stay_as_they_are(tmp_path, kwargs):
    path = _shuffle_graph(tmp_path, **kwargs)
    src = convert(path, tmp_path / "out", name="chain").source_path.read_text()
    assert "channel_shuffle" not in src and "permute(" in src
    assert verify(path, load(path), batch_sizes=(1, 2)).passed


@pytest.mark.parametrize("batch, target, follows_batch", [
    (1, [1, -1], True),          # zoo's own exports: a batch-1 flatten follows the batch
    (2, [2, 3, 25], True),       # a graph written for batch 2 generalizes from 2
    (2, [1, 3, 25], False),      # batch 2 into a leading 1 is a size mismatch, not a batch to generalize
])
def test_only_a_reshape_from_the_traced_batch_follows_the_batch(tmp_path, batch, target, follows_batch):
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(len(target))])],
        [numpy_helper.from_array(np.array(target, dtype=np.int64), "shape")])
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    module = load(path)
    x = torch.randn(3, 3, 5, 5)
    if follows_batch:
        assert module(x).shape[0] == 3
    else:
        with pytest.raises(RuntimeError, match="invalid for input of size"):
            module(torch.randn(batch, 3, 5, 5))
