"""The ONNX model zoo's four opset-9 graphs, rebuilt with random weights, against onnxruntime."""
from __future__ import annotations

import re

import pytest
import torch

from zoo.convert import convert, load, verify

from .conftest import ZOO_GRAPHS


@pytest.mark.parametrize("graph", sorted(ZOO_GRAPHS))
def test_matches_onnxruntime_at_batch_1_and_5(standins, graph):
    module = load(standins[graph], outputs=[ZOO_GRAPHS[graph]])
    report = verify(standins[graph], module, batch_sizes=(1, 5))
    assert report.passed, str(report)
    assert [c.batch_size for c in report.comparisons] == [1, 5]
    assert all(c.max_ref > 1e-3 for c in report.comparisons), "reference is degenerate"
    assert report.worst <= 1e-4


@pytest.mark.parametrize("graph", sorted(ZOO_GRAPHS))
def test_any_batch_size_gives_per_sample_results(standins, graph):
    module = load(standins[graph], outputs=[ZOO_GRAPHS[graph]])
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        together = module(x)
        alone = torch.cat([module(x[i:i + 1]) for i in range(3)])
    assert together.shape[0] == 3
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4 * alone.abs().max().item())


def _source(standins, graph, tmp_path):
    return convert(standins[graph], tmp_path, name=graph, outputs=[ZOO_GRAPHS[graph]]).source_path.read_text()


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
    src = _source(standins, "squeezenet", tmp_path)
    assert "self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2)" in src
    assert "self.fire2_squeeze1x1 = nn.Conv2d(64, 16, kernel_size=1)" in src
    assert "self.fire2_expand3x3 = nn.Conv2d(16, 64, kernel_size=3, padding=1)" in src
    assert "self.conv10 = nn.Conv2d(512, 1000, kernel_size=1)" in src
    forward = src[src.index("def forward"):]
    assert "x = self.maxpool(torch.relu(self.conv1(data_0)))" in forward
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
    from zoo.standins import build_standin

    sources = []
    for seed in (1, 2):
        path = build_standin("inception_v1", tmp_path / f"s{seed}" / "googlenet-9.onnx", seed=seed)
        result = convert(path, tmp_path / f"out{seed}", name="googlenet", outputs=["r143"],
                         source_name="googlenet-9.onnx", source_sha256="0" * 64)
        sources.append(result.source_path.read_bytes())
    assert sources[0] == sources[1]
    assert re.search(rb"sha256 0{64}", sources[0])
