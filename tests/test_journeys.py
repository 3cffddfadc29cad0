"""A new user's journeys, end to end through the CLI and the public API: export a torchvision model,
inspect it, convert it, load it back, add it to a registry of one's own (a local file as its source),
build it, fine-tune it on an ImageFolder, predict with the result, and save / pickle the module."""
from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

import zoo
from zoo.convert import load_converted

from .helpers import zoo_cli

ROOT = Path(__file__).resolve().parents[1]

ENTRY = """\
models:
  tiny_resnet:
    description: A torchvision ResNet-18 exported by the user.
    upstream: torchvision resnet18 (random weights), torch.onnx.export opset 17
    paper: https://arxiv.org/abs/1512.03385
    license: BSD-3-Clause
    source:
      file: resnet18.onnx
      urls: [{url}]
      sha256: {sha256}
      size: {size}
    input_size: [3, 224, 224]
    preprocessing:
      channel_order: RGB
      value_range: 1
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
      resize: 256
      crop: 224
      source: torchvision's ImageNet statistics
    labels: imagenet-1k
    classifier: {classifier}
    logits: logits
"""


def run_zoo(*args, env=None, check=True) -> subprocess.CompletedProcess:
    done = zoo_cli(*args, env=env)
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """What README shows: torch.onnx.export with BatchNorm kept (TrainingMode.PRESERVE) and a dynamic batch."""
    path = tmp_path_factory.mktemp("export") / "resnet18.onnx"
    model = torchvision.models.resnet18(num_classes=1000).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return path


def test_inspect_convert_and_load_back(exported, tmp_path):
    listed = run_zoo("convert", exported, "--layers")
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["op", "onnx", "node"] and "layer" in header
    gemm = next(r for r in rows if r.startswith("Gemm"))
    assert " fc " in f" {gemm} "  # the generated layer name, to put in the registry as `classifier`
    piped = subprocess.run(f"{sys.executable} -m zoo convert {exported} --layers | head -2", shell=True,
                           capture_output=True, text=True, timeout=300)
    assert len(piped.stdout.splitlines()) == 2 and "Traceback" not in piped.stderr
    folder = tmp_path / "out"
    run_zoo("convert", exported, "-o", folder)
    module = load_converted(folder)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert module(x).shape == (2, 1000)
    assert (folder / "resnet18.safetensors").stat().st_mode & 0o777 == (folder / "resnet18.py").stat().st_mode & 0o777
    bad = run_zoo("convert", tmp_path, "-o", tmp_path / "x", check=False)
    assert bad.returncode == 2 and "is a folder" in bad.stderr


@pytest.fixture(scope="module")
def own_zoo(exported, tmp_path_factory):
    """A registry of one's own (ZOO_REGISTRY) whose entry's source is a local path, built with the CLI."""
    root = tmp_path_factory.mktemp("myzoo")
    hashed = run_zoo("hash", exported).stdout
    sha256 = hashed.split("sha256: ")[1].split()[0]
    size = int(hashed.split("size: ")[1].split()[0])
    (root / "registry.yaml").write_text(ENTRY.format(url=exported, sha256=sha256, size=size, classifier="fc"))
    env = {"ZOO_REGISTRY": str(root / "registry.yaml"), "ZOO_CACHE": str(root / "cache"),
           "ZOO_PINS": str(root / "none.json")}
    offline = run_zoo("build", "--offline", "--out", root / "offline", env=env)
    assert "skipped: no stand-in" in offline.stdout  # an entry without a stand-in never breaks offline builds
    run_zoo("build", "--out", root / "build", env=env)
    assert (root / "models" / "tiny_resnet.py").is_file()
    return root, env


def test_own_registry_model_matches_its_onnx_file(own_zoo, exported, monkeypatch):
    root, env = own_zoo
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert zoo.list_models() == ["tiny_resnet"]
    model = zoo.create_model("tiny_resnet", pretrained=True).eval()  # converted from the local file, cached
    import onnxruntime as ort

    x = torch.randn(2, 3, 224, 224)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.from_numpy(expected), rtol=1e-4, atol=1e-4)


def _image_folder(root: Path) -> Path:
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    for split, count in (("train", 6), ("val", 3)):
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (40 + i, 48), tuple(max(0, c - 9 * i) for c in rgb)).save(root / split / name / f"{i}.png")
    return root


def test_fine_tune_then_predict_with_the_trained_labels(own_zoo, tmp_path):
    root, env = own_zoo
    data = _image_folder(tmp_path / "data")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "finetune.py"), "--model", "tiny_resnet", "--data",
                           str(data), "--epochs", "1", "--image-size", "64", "--batch-size", "6",
                           "--out", str(tmp_path / "ft")], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-2000:]
    predicted = run_zoo("predict", "tiny_resnet", data / "val" / "red" / "0.png", "--weights", tmp_path / "ft",
                        "--top", "3", env=env)
    shown_top = [tuple(line.split()[::-1]) for line in predicted.stdout.splitlines()[1:]]
    # The ranking and probabilities the CLI prints are the fine-tuned model's own, computed here independently.
    expect = ("import torch, zoo; from PIL import Image; m = zoo.create_model('tiny_resnet', pretrained=%r).eval(); "
              "x = zoo.transforms(m)(Image.open(%r).convert('RGB')).unsqueeze(0); "
              "p = torch.softmax(m(x), 1)[0].tolist(); names = zoo.labels(m); "
              "print(sorted(((names[i], f'{v:.2%%}') for i, v in enumerate(p)), key=lambda t: -float(t[1][:-1])))"
              % (str(tmp_path / "ft"), str(data / "val" / "red" / "0.png")))
    own = subprocess.run([sys.executable, "-c", expect], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert own.returncode == 0, own.stderr[-2000:]
    assert str(shown_top) == own.stdout.strip() and sorted(n for n, _ in shown_top) == ["blue", "green", "red"]
    code = ("import zoo; m = zoo.create_model('tiny_resnet', pretrained=%r); t = zoo.transforms(m); "
            "print(m.num_classes, zoo.labels(m), t.transforms[2].size, m.pretrained_cfg['accuracy'])" % str(tmp_path / "ft"))
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, **env})
    assert shown.stdout.strip() == "3 ['blue', 'green', 'red'] (64, 64) None", shown.stderr
    wrong = subprocess.run([sys.executable, "-c", code.replace("pretrained=", "num_classes=5, pretrained=")],
                           capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert wrong.returncode != 0 and "3-class head, not num_classes=5" in wrong.stderr


def test_finetune_cli_failures_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "finetune.py"), "--model", "squeezenet1_1",
                           "--dataset", "digits", "--pretrained", str(tmp_path / "missing")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no such file or folder" in done.stderr and "--pretrained" in done.stderr


@pytest.mark.parametrize("name", ["squeezenet1_1", "resnet50"])
def test_models_pickle_save_whole_and_deepcopy(name, tmp_path):
    model = zoo.create_model(name, num_classes=4).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(copy.deepcopy(model)(x), expected)
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), expected)
    torch.save(model, tmp_path / "whole.pt")
    torch.save(x, tmp_path / "x.pt")
    code = (f"import torch; m = torch.load({str(tmp_path / 'whole.pt')!r}, weights_only=False); "
            f"x = torch.load({str(tmp_path / 'x.pt')!r}); print(type(m).__module__, m.num_classes, m(x).sum().item())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    module, classes, total = done.stdout.split()
    assert module == "zoo.modeling.architectures" and classes == "4" and float(total) == pytest.approx(expected.sum().item(),
                                                                                            rel=1e-5), done.stderr


def test_fixed_and_adaptive_pool_heads():
    resnet = zoo.resnet50().eval()  # registry: global_pool adaptive
    with torch.no_grad():
        assert resnet(torch.randn(1, 3, 224, 224)).shape == resnet(torch.randn(1, 3, 160, 192)).shape == (1, 1000)
    for name in ("shufflenet",):  # registry: global_pool adaptive on a fixed 7x7 pooling
        model = zoo.create_model(name).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 256, 288)).shape == (1, 1000), name
    googlenet = zoo.googlenet().eval()  # Caffe's padded 7x7 pooling: needs its native size
    with pytest.raises(ValueError, match=r"googlenet needs 224x224 inputs .* got 160x160"):
        googlenet(torch.randn(1, 3, 160, 160))


def test_adaptive_pooling_asked_of_a_graph_without_a_global_window_is_refused(cut_standins, tmp_path):
    from zoo.convert import ConversionError, convert

    with pytest.raises(ConversionError, match=r"global_pool='adaptive', but no AveragePool or MaxPool covers"):
        convert(cut_standins["googlenet"], tmp_path, global_pool="adaptive")


def test_generated_names_never_shadow_builtins(tmp_path):
    from onnx import helper

    from zoo.convert import convert

    from .helpers import make_model, tensor

    # two inputs keep their (sanitized) names; a single one is `x`, as torchvision names it
    make_model([helper.make_node("Add", ["input", "min"], ["max"])], [tensor("input", ["N", 3]), tensor("min", ["N", 3])],
               [tensor("max", ["N", 3])], path=tmp_path / "names.onnx")
    source = convert(tmp_path / "names.onnx", tmp_path / "out").source_path.read_text()
    assert "def forward(self, input_: torch.Tensor, min_: torch.Tensor)" in source


@pytest.mark.parametrize("name", ["googlenet", "alexnet", "zfnet512", "vgg19", "inception_v2"])
def test_a_fixed_size_model_suggests_only_what_helps(name):
    """README: no registry option gives these other input sizes, so their error does not suggest one."""
    from zoo.modeling.backbone import adaptive_pool_would_help

    with torch.device("meta"):
        model = zoo.create_model(name)
        with pytest.raises(ValueError, match=rf"{name} needs 224x224 inputs .* got 256x256: resize") as error:
            model(torch.empty(1, 3, 256, 256))
        assert "adaptive" not in str(error.value)
        assert adaptive_pool_would_help(zoo.create_model("shufflenet"))  # whole-map pooling its registry made adaptive


def test_zoo_finetune_on_cuda(tmp_path):
    """`zoo finetune --device cuda` trains on the GPU and saves weights that load back on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine (runs where one is present, e.g. the lent device machine)")
    from safetensors.torch import load_file

    from zoo.cli import main as zoo_main
    from zoo.publish.hub import save_pretrained

    torch.manual_seed(0)
    save_pretrained(zoo.create_model("squeezenet1_1", num_classes=10), tmp_path / "start")
    assert zoo_main(["finetune", "--model", "squeezenet1_1", "--dataset", "digits", "--pretrained",
                     str(tmp_path / "start"), "--epochs", "1", "--image-size", "32", "--device", "cuda",
                     "--out", str(tmp_path / "ft")]) == 0
    before = load_file(str(tmp_path / "start" / "model.safetensors"))
    after = load_file(str(tmp_path / "ft" / "model.safetensors"), device="cpu")
    assert sorted(before) == sorted(after) and all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after if k.endswith("weight"))  # it trained
    tuned = zoo.create_model("squeezenet1_1", pretrained=tmp_path / "ft")
    assert tuned.num_classes == 10 and len(tuned.pretrained_cfg["finetune"]["history"]) == 1
