"""torchvision's own architectures, exported by torch.onnx.export, converted back and compared."""
from __future__ import annotations

import pytest

from .helpers import export_and_compare

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
    export_and_compare(arch, tmp_path / f"{arch}.onnx", opset, batch_sizes=(1, 4), batch=4, **ARCHS.get(arch, {}))

