"""The zoo's user API without a Hub: constructors, local weights, transforms, labels, CLI, fine-tuning."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import zoo
from zoo.registry import load_registry
from zoo.weights.pretrained import WeightsError

from .conftest import ZOO_MODELS
from .helpers import zoo_cli

ROOT = Path(__file__).resolve().parents[1]


def test_constructors_come_from_the_registry():
    assert zoo.list_models() == ZOO_MODELS and len(ZOO_MODELS) == 9
    assert zoo.list_models("*net1*") == ["squeezenet1_1", "densenet121"]
    for name in zoo.list_models():
        fn = getattr(zoo, name)
        assert fn.__name__ == name and "zoo.create_model" in fn.__doc__
    model = zoo.googlenet()
    assert isinstance(model, zoo.ZooModel) and model.num_classes == 1000
    assert model.pretrained_cfg["preprocessing"]["channel_order"] == "BGR"
    assert model.pretrained_cfg["weights"] is None
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        zoo.create_model("nope")
    with pytest.raises(TypeError, match="unexpected keyword"):
        zoo.resnet50(colour="red")


def test_classifier_types_and_input_checks():
    linear = zoo.resnet50(num_classes=5)
    assert isinstance(linear.get_classifier(), torch.nn.Linear) and linear.get_classifier().out_features == 5
    conv = zoo.densenet121(num_classes=5)
    assert isinstance(conv.get_classifier(), torch.nn.Conv2d)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), e.g. \(N, 3, 224, 224\); got \(3, 224, 224\)"):
        conv(torch.randn(3, 224, 224))
    with pytest.raises(ValueError, match=r"got \(1, 1, 224, 224\)"):
        conv(torch.randn(1, 1, 224, 224))


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    model = zoo.squeezenet1_1()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder, model


def test_local_weights(local_weights):
    folder, original = local_weights
    for source in (folder, folder / "model.safetensors", str(folder)):
        loaded = zoo.squeezenet1_1(pretrained=source)
        assert torch.equal(loaded.conv1.weight, original.conv1.weight)


def test_weights_that_do_not_fit_name_the_tensors(local_weights, tmp_path):
    folder, _ = local_weights
    state = load_file(str(folder / "model.safetensors"))
    state["conv1.weight"] = torch.zeros(1, 2, 3, 3)
    state.pop("conv10.bias")
    state["surprise"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError) as err:
        zoo.squeezenet1_1(pretrained=tmp_path / "bad.safetensors")
    text = str(err.value)
    assert "missing: conv10.bias" in text and "unexpected: surprise" in text and "conv1.weight (1, 2, 3, 3)" in text
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(WeightsError, match="only .safetensors"):
        zoo.squeezenet1_1(pretrained=tmp_path / "model.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        zoo.squeezenet1_1(pretrained=tmp_path / "junk.safetensors")


# Each model's published preprocessing, written out from its source (not read from the registry):
# channel order fed to the network, pixel scale, resize of the shorter side, then (x - mean) / std per channel
# in RGB order as published.
PUBLISHED = {
    # shicai/DenseNet-Caffe: BGR 0-255, means [103.94, 116.78, 123.68] (B, G, R), then * 0.017
    "densenet121": ("BGR", 255, 256, (123.68, 116.78, 103.94), (1 / 0.017,) * 3),
    # resnet-50-caffe2 (Open Model Zoo): BGR 0-255, mean and scale per channel (B, G, R as listed)
    "resnet50": ("BGR", 255, 256, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    # ONNX model zoo googlenet: BGR 0-255, resized straight to 224, mean [103.939, 116.779, 123.68] (B, G, R)
    "googlenet": ("BGR", 255, 224, (123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
    # ONNX model zoo shufflenet: ImageNet's RGB 0-1 mean/std, fed to the network in BGR order
    "shufflenet": ("BGR", 1, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _patterned_image(h=300, w=400) -> np.ndarray:
    """Different waves in each channel, so a wrong resize, crop offset, flip or channel order shows."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    channels = [127.5 + 127.5 * np.sin(xx / 9.0), 127.5 + 127.5 * np.sin(yy / 7.0 + xx / 31.0), (xx * 0.5 + yy * 0.3) % 256]
    return np.stack(channels, -1).round().astype(np.uint8)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_transforms_match_the_published_recipe_on_a_patterned_image(name):
    order, scale, resize, mean, std = PUBLISHED[name]
    pixels = _patterned_image()
    image = Image.fromarray(pixels)
    h, w = pixels.shape[:2]
    long = int(resize * w / h)
    resized = np.asarray(image.resize((long, resize), Image.BILINEAR), np.float64)
    top, left = round((resize - 224) / 2), round((long - 224) / 2)
    rgb = resized[top:top + 224, left:left + 224] * (scale / 255)
    expected = ((rgb - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
    if order == "BGR":
        expected = expected[::-1]
    got = zoo.transforms(name)(image)
    assert got.shape == (3, 224, 224) and got.dtype == torch.float32
    # torchvision's antialiased resize and PIL's round differently: at most one grey level, and rarely
    levels = np.abs(got.numpy() - expected) * np.array(std)[::-1 if order == "BGR" else 1, None, None] * 255 / scale
    assert levels.max() <= 1.001 and levels.mean() < 0.01, (levels.max(), levels.mean())


def test_transforms_take_uint8_tensors_and_train_mode_keeps_the_size():
    tensor_in = torch.from_numpy(np.full((3, 300, 400), 50, dtype=np.uint8))
    rgb01 = zoo.transforms("googlenet")(tensor_in)
    torch.testing.assert_close(rgb01[:, 5, 5], torch.tensor([50 - 103.939, 50 - 116.779, 50 - 123.68]))
    train = zoo.transforms("resnet50", train=True)(Image.fromarray(_patterned_image()))
    assert train.shape == (3, 224, 224)


def test_labels():
    names = zoo.labels("resnet50")
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet tissue"
    assert zoo.labels(zoo.squeezenet1_1()) == names


def test_cli_list_info_and_convert(tmp_path):
    listed = zoo_cli("list")
    rows = listed.stdout.splitlines()
    assert listed.returncode == 0 and rows[0].split()[:3] == ["model", "classifier", "top-1"]
    assert [r.split()[0] for r in rows[1:]] == zoo.list_models()
    info = zoo_cli("info", "resnet50")
    fields = dict(line.split(None, 1) for line in info.stdout.splitlines() if line[:1].strip())
    assert fields["classifier"] == "pred" and fields["input"] == "3x224x224" and "822daa93" in fields["onnx"]
    bad = zoo_cli("info", "nope")
    assert bad.returncode == 2 and "unknown model" in bad.stderr
    from zoo.publish.standins import build_standin

    onnx_path = build_standin("squeezenet", tmp_path / "sq.onnx")
    conv = zoo_cli("convert", onnx_path, "-o", tmp_path / "o", "--outputs", "r65")
    assert conv.returncode == 0 and (tmp_path / "o" / "sq.py").exists()


@pytest.mark.slow
def test_finetune_on_real_digits_beats_chance(tmp_path):
    from zoo.tasks.finetune import build_parser, run

    args = build_parser().parse_args(["--model", "densenet121", "--dataset", "digits", "--pretrained", "none",
                                      "--epochs", "2", "--image-size", "64", "--out", str(tmp_path / "ft")])
    result = run(args)
    assert result["val_accuracy"] > 0.5, result  # chance is 0.1
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["num_classes"] == 10 and config["labels"] == [str(d) for d in range(10)]
    model = zoo.densenet121(num_classes=10, pretrained=tmp_path / "ft")
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.slow
def test_finetune_with_torchrun_two_processes(tmp_path):
    from zoo.publish.localhub import free_port

    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "scripts" / "finetune.py"), "--model", "densenet121", "--dataset", "digits",
                           "--pretrained", "none", "--epochs", "2", "--image-size", "64", "--batch-size", "32",
                           "--out", str(tmp_path / "ddp")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["finetune"]["world_size"] == 2
    assert config["finetune"]["val_accuracy"] > 0.3, config["finetune"]
    assert done.stdout.count("epoch 2:") == 1  # only rank 0 reports


def test_weights_with_the_wrong_dtype_are_refused(local_weights, tmp_path):
    folder, _ = local_weights
    state = load_file(str(folder / "model.safetensors"))
    state["conv1.weight"] = state["conv1.weight"].double()
    save_file(state, str(tmp_path / "double.safetensors"))
    with pytest.raises(WeightsError, match=r"wrong dtype: conv1.weight torch.float64 \(model: torch.float32\)"):
        zoo.squeezenet1_1(pretrained=tmp_path / "double.safetensors")


def _first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_every_model_loads_built_weights_and_fine_tunes(offline_build, built_modules, name):
    """The committed source with the offline build's weights is the build's module; a new head fine-tunes."""
    opts, _ = offline_build
    folder = opts.out / name
    entry = load_registry()[name]
    model = getattr(zoo, name)(pretrained=folder).eval()
    assert type(model).__module__ == "zoo.modeling.architectures" and model.num_classes == 1000
    assert any(cls.__module__ == f"zoo.models.{name}" for cls in type(model).__mro__)
    assert model.pretrained_cfg["preprocessing"]["channel_order"] == entry.preprocessing.channel_order
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = built_modules[name](x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    tuned = zoo.create_model(name, pretrained=folder, num_classes=7)
    head = tuned.get_classifier()
    assert head is getattr(tuned, entry.classifier)
    assert (head.out_features if isinstance(head, torch.nn.Linear) else head.out_channels) == 7
    assert torch.equal(_first_conv(tuned).weight, _first_conv(model).weight)  # the backbone is the loaded one
    tuned.train()
    loss = torch.nn.functional.cross_entropy(tuned(x), torch.tensor([1, 6]))
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_every_model_has_transforms_labels_and_a_hub_entry(name):
    pre = load_registry()[name].preprocessing
    flat = Image.fromarray(np.full((300, 400, 3), (10, 20, 30), dtype=np.uint8))
    out = zoo.transforms(name)(flat)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    rgb = torch.tensor([10.0, 20.0, 30.0]) / (255.0 if pre.value_range == 1 else 1.0)
    pixel = rgb.flip(0) if pre.channel_order == "BGR" else rgb
    torch.testing.assert_close(out[:, 100, 100], (pixel - torch.tensor(pre.mean)) / torch.tensor(pre.std))
    assert zoo.labels(name) == zoo.labels("resnet50") and len(zoo.labels(name)) == 1000
    import hubconf

    assert getattr(hubconf, name).__name__ == name


def test_torch_hub_loads_a_new_model_from_this_checkout():
    model = torch.hub.load(str(ROOT), "shufflenet", source="local", trust_repo=True)
    assert type(model).__module__ == "zoo.modeling.architectures" and isinstance(model.get_classifier(), torch.nn.Linear)
    with torch.no_grad():
        assert model(torch.randn(3, 3, 224, 224)).shape == (3, 1000)
