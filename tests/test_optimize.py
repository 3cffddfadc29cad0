"""zoo.optimize: fused, compiled with Inductor's freezing, same outputs, the zoo model's config kept.

Compiling is slow on a small CPU machine, so the models here are small and each is compiled once."""
from __future__ import annotations

import pytest
import torch
import torch._inductor.freezing
from torch import nn

import zoo
from zoo.modeling.optimize import TOLERANCE


def _assert_close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    scale = expected.abs().max().item()
    assert scale > 1e-3
    worst = (got.float() - expected.float()).abs().max().item()
    assert worst <= TOLERANCE[dtype] * scale, f"max difference {worst:.3g} for outputs up to {scale:.3g}"


def test_optimize_folds_batchnorm_freezes_the_weights_and_keeps_outputs(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
    frozen = []
    freeze = torch._inductor.freezing.freeze
    monkeypatch.setattr(torch._inductor.freezing, "freeze", lambda *a, **k: frozen.append(1) or freeze(*a, **k))
    x = torch.randn(2, 3, 16, 16)
    optimized = zoo.optimize(model, x)
    assert frozen, "Inductor's freezing did not run"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in optimized.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is left as it was
    with torch.no_grad():
        expected = model(x)
    got = optimized(x)
    assert got.dtype == torch.float32 and not got.requires_grad
    _assert_close(got, expected, torch.float32)
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        zoo.optimize(model.train(), x)


def test_optimize_keeps_a_zoo_models_config_and_outputs():
    torch.manual_seed(0)
    model = zoo.squeezenet1_1().eval()
    x = torch.randn(1, 3, 64, 64)
    optimized = zoo.optimize(model, x)
    assert optimized.pretrained_cfg == model.pretrained_cfg and optimized.num_classes == 1000
    assert zoo.labels(optimized) == zoo.labels(model)
    with torch.no_grad():
        expected = model(x)
    _assert_close(optimized(x), expected, torch.float32)
