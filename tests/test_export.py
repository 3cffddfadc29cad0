"""Shipping models: zoo.export / `zoo export` to ONNX, .pt2 and TorchScript (reloaded and compared), scripting,
tracing, torch.export and fullgraph compilation over the registry, gradient checkpointing, list_models.

Weights are random (the layers' initialization): these test structure, not accuracy.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from torch import nn

import zoo
from zoo import cli
from zoo.convert import api as convert_api
from zoo.publish.hub import save_pretrained
from zoo.tasks import export as export_task

from .conftest import ZOO_MODELS


def _close(a, b, rtol=1e-4):
    a, b = (a if isinstance(a, (list, tuple)) else [a]), (b if isinstance(b, (list, tuple)) else [b])
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() <= rtol * max(1.0, x.abs().max().item())


def _compiles_and_traces(model: nn.Module, x: torch.Tensor) -> None:
    """torch.jit.trace and torch.compile(fullgraph=True) (dynamo's capture: the property that matters for
    the zoo's code; the eager backend keeps inductor's code generation out of the test's time)."""
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, x, check_trace=False)
        _close(expected, traced(x))
        torch._dynamo.reset()
        _close(expected, torch.compile(model, fullgraph=True, backend="eager")(x))


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_every_model_ships_in_every_format(name, tmp_path):
    """All three formats, with a dynamic batch, each reloaded by its runtime and compared at batch sizes 2 and 3;
    plus tracing and a fullgraph compile."""
    model = zoo.create_model(name).eval()
    for fmt, suffix in export_task.FORMATS.items():
        config = zoo.export(model, tmp_path / f"model{suffix}", dynamic_batch=True)
        assert (tmp_path / f"model{suffix}").is_file()
        assert config["verified"]["batch_sizes"] == [2, 3] and config["verified"]["max_abs_error"] < 1e-3
        assert config["input"]["shape"] == ["batch", *model.pretrained_cfg["input_size"]]
        assert json.loads((tmp_path / "config.json").read_text())["format"] == fmt
    assert len(config["labels"]) == 1000 and config["labels"][0] == "tench"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.onnx", "model.pt", "model.pt2"]
    _compiles_and_traces(model, export_task.random_inputs(model, 2, seed=1))


@pytest.mark.parametrize("name, options", [("resnet50", {"features_only": True, "out_indices": (1, 3)}),
                                           ("googlenet", {"features_only": True}),
                                           ("squeezenet1_1", {"global_pool": "avgmax", "drop_rate": 0.2})])
def test_backbones_and_head_options_script_export_and_compile(name, options, tmp_path):
    model = zoo.create_model(name, **options).eval()
    x = export_task.random_inputs(model, 2, seed=0)
    with torch.no_grad():
        expected = model(x)
    scripted = torch.jit.script(model)
    _close(expected, scripted(x))
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    _close(expected, program.module()(x))
    three = export_task.random_inputs(model, 3, seed=1)
    with torch.no_grad():
        _close(model(three), program.module()(three))
    _compiles_and_traces(model, x)
    config = zoo.export(model, tmp_path / "model.onnx")  # a fixed batch of one: compared twice at batch 1
    assert config["input"]["shape"][0] == 1 and config["verified"]["batch_sizes"] == [1, 1]
    if options.get("features_only"):
        assert config["num_classes"] == 0 and config["labels"] is None
        assert len(config["outputs"]) == len(model.feature_info)


@pytest.mark.parametrize("name", ["squeezenet1_1", "resnet50"])
def test_onnx_export_converts_back_to_the_same_layers(name, tmp_path):
    """The exporter folds BatchNorm into the convolutions before it (as zoo.fuse does): the round trip gives
    the fused model's layers."""
    model = zoo.create_model(name).eval()
    with torch.no_grad():  # statistics as after training (at their initial values the folded biases are zero)
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    zoo.export(model, tmp_path / "model.onnx", dynamic_batch=True)
    back = convert_api.load(tmp_path / "model.onnx")

    def layers(m):
        return sorted(f"{type(leaf).__name__}{[tuple(p.shape) for p in leaf.parameters()]}"
                      for leaf in m.modules() if not list(leaf.children()) and list(leaf.parameters()))

    assert layers(back) == layers(zoo.fuse(model))
    assert len(layers(back)) == len([m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    x = export_task.random_inputs(model, 2, seed=3)
    with torch.no_grad():
        _close(model(x), back(x))


def _numpy_preprocess(image: Image.Image, pre: dict) -> np.ndarray:
    """What a deployment without zoo does with config.json's preprocessing: resize, center crop, scale,
    channel order, normalize."""
    w, h = image.size
    scale = pre["resize"] / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    left, top = (image.width - pre["crop"]) // 2, (image.height - pre["crop"]) // 2
    image = image.crop((left, top, left + pre["crop"], top + pre["crop"]))
    x = np.asarray(image, dtype=np.float32) * (pre["value_range"] / 255.0)
    if pre["channel_order"] == "BGR":
        x = x[..., ::-1]
    x = (x - np.array(pre["mean"], dtype=np.float32)) / np.array(pre["std"], dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def test_finetuned_folder_exports_and_predicts_with_onnxruntime(tmp_path, capsys):
    torch.manual_seed(0)
    model = zoo.create_model("squeezenet1_1", num_classes=3)
    model.pretrained_cfg["labels"] = ["cat", "dog", "fox"]
    save_pretrained(model, tmp_path / "finetuned")
    out = tmp_path / "shipped" / "pets.onnx"
    assert cli.main(["export", str(tmp_path / "finetuned"), "--format", "onnx", "--dynamic-batch", "--opset", "18",
                     "-o", str(out)]) == 0
    assert "onnxruntime matches the model at batch sizes 2, 3" in capsys.readouterr().out

    config = json.loads((out.parent / "config.json").read_text())
    assert config["labels"] == ["cat", "dog", "fox"] and config["file"] == "pets.onnx"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {config["input"]["name"]: _numpy_preprocess(image, config["preprocessing"])})[0]
    assert logits.shape == (1, 3)

    reloaded = zoo.create_model("squeezenet1_1", pretrained=tmp_path / "finetuned").eval()
    with torch.no_grad():
        expected = reloaded(zoo.transforms(reloaded)(image).unsqueeze(0))
    assert config["labels"][int(logits.argmax())] == zoo.labels(reloaded)[int(expected.argmax())]
    # PIL's resize against torchvision's antialiased one: close, not identical.
    np.testing.assert_allclose(logits, expected.numpy(), rtol=0.05, atol=0.05 * float(expected.abs().max()))


def test_a_mismatch_is_an_error_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    model = zoo.create_model("squeezenet1_1")
    save_pretrained(model, tmp_path / "weights")
    real = export_task._runner
    monkeypatch.setattr(export_task, "_runner", lambda path, fmt: (lambda x: [o + 1.0 for o in real(path, fmt)(x)]))
    with pytest.raises(zoo.ExportError, match=r"model\.pt2: output 0 differs .* torch\.export\.load"):
        zoo.export(model, tmp_path / "out" / "model.pt2")
    assert list((tmp_path / "out").iterdir()) == []
    assert cli.main(["export", "squeezenet1_1", "--weights", str(tmp_path / "weights"), "-o",
                     str(tmp_path / "out" / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "differs" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []


def test_export_usage_errors(tmp_path, capsys):
    assert cli.main(["export", "squeezenet1_1", "-o", str(tmp_path / "m.bin"), "--weights", str(tmp_path)]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert cli.main(["export", "squeezenet1_1", "--format", "pt2", "--opset", "17", "--weights", str(tmp_path),
                     "-o", str(tmp_path / "m.pt2")]) == 2
    assert "opset is for format='onnx'" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert cli.main(["export", str(tmp_path / "folder"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "squeezenet1_1", "--format", "tflite", "-o", "m"])
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="expected a zoo model"):
        zoo.export(nn.Linear(2, 2), tmp_path / "m.onnx")


# ---- timm conventions ---------------------------------------------------------------------------------------

def _saved_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """Bytes autograd keeps for backward while the forward runs (activation memory), and the gradients."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size() if t.device.type != "meta" else 0)
        return t

    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(7)  # the same dropout masks with and without checkpointing
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).square().mean()
    return sum(saved), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("name, size", [("resnet50", 64), ("shufflenet", 64),
                                        ("squeezenet1_1", 64)])
def test_grad_checkpointing_same_gradients_less_memory(name, size):
    torch.manual_seed(0)
    plain = zoo.create_model(name).train()
    checkpointed = zoo.create_model(name).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing()
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    x = torch.randn(2, 3, size, size)
    plain_bytes, plain_grads = _saved_bytes(plain, x)
    kept_bytes, grads = _saved_bytes(checkpointed, x)
    for a, b in zip(plain_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # BatchNorm running statistics are updated once per step, as without checkpointing.
    for (k, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert kept_bytes < 0.6 * plain_bytes, (kept_bytes, plain_bytes)
    checkpointed.set_grad_checkpointing(False)
    assert _saved_bytes(checkpointed, x)[0] == plain_bytes


def test_grad_checkpointing_follows_new_layers_and_leaves_eval_alone():
    model = zoo.create_model("squeezenet1_1")
    model.set_grad_checkpointing()
    model.reset_classifier(5)  # a new classifier after checkpointing was set: its weights get gradients
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    assert model.get_classifier().weight.grad is not None and model(x).shape == (2, 5)
    with torch.no_grad():
        model.eval()
        assert model(x).shape == (2, 5)
    torch.jit.script(model)  # scripting ignores checkpointing (a training-time device)
    with pytest.raises(ValueError, match="enable must be True or False"):
        model.set_grad_checkpointing("yes")


def test_list_models_filters_like_timm():
    assert zoo.list_models() == ZOO_MODELS == zoo.list_models("")
    assert zoo.list_models("res*") == ["resnet50"]
    assert zoo.list_models(["res*", "vgg*"]) == ["resnet50", "vgg19"]
    assert zoo.list_models("*net*", exclude_filters=["*net1*", "google*"]) == \
        [n for n in ZOO_MODELS if "net" in n and "net1" not in n and not n.startswith("google")]
    assert zoo.list_models(filter="alex*", pretrained=True) == ["alexnet"]  # a pinned ONNX file with URLs
    assert zoo.list_models(pretrained=True, exclude_filters="*") == []


def test_default_cfg_is_pretrained_cfg():
    model = zoo.create_model("alexnet", num_classes=4)
    assert model.default_cfg is model.pretrained_cfg and model.default_cfg["num_classes"] == 4
