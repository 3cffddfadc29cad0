"""torchvision's own architectures, exported by torch.onnx.export, converted back and compared."""
from __future__ import annotations

import pytest
import torch
import torchvision

from zoo.convert import load, verify

from .conftest import export, randomize_

ARCHS = {
    "squeezenet1_1": {},
    "densenet121": {},
    "resnet50": {},
    "googlenet": {"aux_logits": False, "init_weights": False},
}


CASES = [(arch, opset) for arch in sorted(ARCHS) for opset in (13, 18)] + \
    [(arch, opset) for arch in ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny")
     for opset in (13, 17)]


@pytest.mark.parametrize("arch,opset", CASES)
def test_export_roundtrip(arch, opset, tmp_path):
    original = randomize_(getattr(torchvision.models, arch)(**ARCHS.get(arch, {})))
    path = export(original, tmp_path / f"{arch}.onnx", opset)
    module = load(path)
    report = verify(path, module, batch_sizes=(1, 4))
    assert report.passed, str(report)
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        expected, got = original(x), module(x)
    assert got.shape == (4, 1000) and expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

