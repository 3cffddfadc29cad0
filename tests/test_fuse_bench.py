"""zoo.fuse (the inference fast path) and the benchmark script's output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo.convert import load

from .helpers import small_convnet

ROOT = Path(__file__).resolve().parents[1]


def test_fuse_folds_batchnorm_and_keeps_outputs(tmp_path):
    model = zoo.resnet50().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    fused = zoo.fuse(model)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 53
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules()) == 0
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert model.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fused.pretrained_cfg == model.pretrained_cfg and zoo.labels(fused) == zoo.labels(model)
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        zoo.fuse(model.train())
    plain = load(small_convnet(tmp_path / "tiny.onnx"))  # a converted module that is not a zoo model
    assert zoo.fuse(plain)(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_benchmark_script_writes_its_table(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--repeat", "1", "--batch-sizes", "1",
                           "--models", "squeezenet1_1", "--json", str(out), "--no-big-weights"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # this checkout's zoo, not an installed one
    assert done.returncode == 0, done.stderr[-2000:]
    assert "latency ms @ batch 1" in done.stdout and "squeezenet1_1" in done.stdout
    row = json.loads(out.read_text())["models"]["squeezenet1_1"]
    assert row["convert_s"] > 0 and row["load_weights_s"] > 0 and row["convert_peak_mb"] > 0
    assert {"zoo", "flat", "zoo+fuse", "optimize", "torchvision", "onnxruntime"} <= set(row["latency_ms@1"])
    assert "optimize/onnxruntime: geometric mean" in done.stdout
