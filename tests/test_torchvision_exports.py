"""torchvision's own architectures, exported by torch.onnx.export, converted back and compared; at opset 17 the
generated module also has the architecture's blocks back."""
from __future__ import annotations

import collections
from functools import partial

import pytest
import torch

from zoo.convert import load

from .helpers import export_and_compare

ARCHS = {
    "squeezenet1_1": {},
    "densenet121": {},
    "resnet50": {},
    "googlenet": {"aux_logits": False, "init_weights": False},
}

# Exports as the exporter writes them (BatchNorm folded) at opset 17: how many instances the most used block
# class has (classes of the generated file, not torch.nn's).
BLOCKS = {"resnet18": 8, "convnext_tiny": 18, "efficientnet_b0": 15, "mobilenet_v3_small": 8, "regnet_y_400mf": 12}

CASES = [(arch, opset) for arch in sorted(ARCHS) for opset in (13, 18)] + \
    [(arch, opset) for arch in ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny")
     for opset in (13, 17)] + [("regnet_y_400mf", 17)]


@pytest.mark.parametrize("arch,opset", CASES)
def test_export_roundtrip(arch, opset, tmp_path):
    module = export_and_compare(arch, tmp_path / f"{arch}.onnx", opset, batch_sizes=(1, 4), batch=4,
                                loader=partial(load, structure=True), **ARCHS.get(arch, {}))
    if opset == 17 and arch in BLOCKS:
        classes = collections.Counter(type(m).__name__ for m in module.modules())
        blocks = [n for m, n in classes.items() if type(module).__name__ != m and not hasattr(torch.nn, m)]
        assert max(blocks, default=0) == BLOCKS[arch], classes
