from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

# huggingface_hub reads these when it is imported: give the test session its own cache, never the user's.
HF_HOME = Path(tempfile.mkdtemp(prefix="zoo-tests-hf-"))
os.environ["HF_HOME"] = str(HF_HOME)
os.environ["HF_HUB_CACHE"] = str(HF_HOME / "hub")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from zoo.standins import build_standin  # noqa: E402

# (light graph, logits tensor) for the ONNX model zoo's four files, cut before any final Softmax.
ZOO_GRAPHS = {
    "squeezenet": "r65",
    "densenet121": "fc6_1",
    "resnet50": "r174",
    "inception_v1": "r143",
}


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standins")
    return {name: build_standin(name, root / f"{name}.onnx", seed=0) for name in ZOO_GRAPHS}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights and batch-norm statistics that keep activations alive through a deep random network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def export(model: torch.nn.Module, path: Path, opset: int, shape=(1, 3, 224, 224)) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), str(path), opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path
