"""`zoo add` and minimal registry entries, as a new user meets them: through the CLI (run in this process; the
Python snippets a user would run, in subprocesses), with ZOO_REGISTRY and ZOO_CACHE in temporary folders.
Small exports (64x64 input, width-reduced) keep it fast."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from PIL import Image
from torch import nn

from tests.helpers import zoo_cli
from tests.servers import FileServer

ROOT = Path(__file__).resolve().parents[1]


def export(model: nn.Module, path: Path, size=(3, 64, 64), *, outputs=("logits",), free_size=False) -> Path:
    axes = {"image": {0: "batch", **({2: "height", 3: "width"} if free_size else {})}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, *size),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=list(outputs), dynamic_axes=axes,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return path


class SoftmaxNet(nn.Module):
    """A Caffe-style head: a fixed pooling over the whole 8x8 map, a Linear, then a Softmax."""

    def __init__(self, classes=7):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return torch.softmax(self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1)), 1)


class TwoHeads(SoftmaxNet):
    def forward(self, x):
        features = torch.flatten(self.pool(torch.relu(self.conv(x))), 1)
        return self.fc(features), features


class Detector(nn.Module):
    """A map per image (boxes and scores per cell), no pooled features, no classifier."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.out = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x)))


def run(*args, env, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env={**os.environ, **env})
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def zoo(*args, env, check=True) -> subprocess.CompletedProcess:
    done = zoo_cli(*args, env=env)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture
def cli():
    """`zoo` for refusals: (exit code, stdout, stderr), never a traceback."""
    def call(*args, env) -> tuple[int, str, str]:
        done = zoo_cli(*args, env=env)
        assert "Traceback" not in done.stderr
        return done.returncode, done.stdout, done.stderr

    return call


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    return {
        "mobilenet": export(torchvision.models.mobilenet_v2(width_mult=0.25), folder / "mobilenet.onnx"),
        "squeezenet": export(torchvision.models.squeezenet1_1(num_classes=4), folder / "squeeze.onnx"),
        "free": export(torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=3), folder / "free.onnx",
                       free_size=True),
        "softmax": export(SoftmaxNet(), folder / "softmax.onnx", size=(3, 32, 32), outputs=("prob",)),
        "two": export(TwoHeads(), folder / "two.onnx", size=(3, 32, 32), outputs=("scores", "features")),
        "detector": export(Detector(), folder / "detector.onnx", size=(3, 32, 32), outputs=("map",)),
    }


@pytest.fixture(scope="module")
def user(files, tmp_path_factory):
    """One user's registry with every kind of file added through `zoo add`."""
    root = tmp_path_factory.mktemp("user")
    env = {"ZOO_REGISTRY": str(root / "registry.yaml"), "ZOO_CACHE": str(root / "cache"),
           "ZOO_PINS": str(root / "none.json")}
    (root / "names.txt").write_text("cat\ndog\nfox\nowl\n")
    added = {
        "mobile": zoo("add", files["mobilenet"], "--name", "mobile", "--license", "BSD-3-Clause", env=env).stdout,
        "squeeze": zoo("add", f"file://{files['squeezenet']}", "--name", "squeeze", "--labels", root / "names.txt",
                       "--preprocessing", "caffe-bgr", env=env).stdout,
        "softmaxed": zoo("add", files["softmax"], "--name", "softmaxed", env=env).stdout,
        "free": zoo("add", files["free"], "--name", "free", "--input-size", "3,64,64", env=env).stdout,
        "two": zoo("add", files["two"], "--name", "two", "--logits", "scores", env=env).stdout,
    }
    with FileServer({"/models/softmax.onnx": files["softmax"].read_bytes()}) as server:
        url = server.url + "/models/softmax.onnx"
        added["web"] = zoo("add", url, "--name", "web", env=env).stdout
        assert [path for path, _ in server.requests] == ["/models/softmax.onnx"]  # fetched once
    return root, env, added, url


def test_add_writes_a_complete_commented_entry_and_builds_it(user, files):
    root, env, added, url = user
    text = (root / "registry.yaml").read_text()
    entries = yaml.safe_load(text)["models"]
    assert list(entries) == ["mobile", "squeeze", "softmaxed", "free", "two", "web"]
    assert entries["free"]["input_size"] == [3, 64, 64] and entries["two"]["logits"] == "scores"
    assert entries["web"]["source"]["urls"] == [url] and entries["web"]["source"]["file"] == "softmax.onnx"
    mobile = entries["mobile"]
    assert mobile["input_size"] == [3, 64, 64] and mobile["classifier"] == "classifier.1"
    assert mobile["logits"] == "logits" and mobile["labels"] == "imagenet-1k" and mobile["license"] == "BSD-3-Clause"
    assert mobile["source"]["size"] == files["mobilenet"].stat().st_size
    assert "classifier: classifier.1  # read from the file" in text
    # the classifier of torchvision's SqueezeNet is a 1x1 convolution before the global pooling
    squeeze = entries["squeeze"]
    assert squeeze["classifier"] == "classifier.1" and squeeze["labels"] == ["cat", "dog", "fox", "owl"]
    assert squeeze["preprocessing"]["channel_order"] == "BGR" and squeeze["license"] == "UNKNOWN"
    assert "license: UNKNOWN  # placeholder" in text and "unverified preset, check upstream" in text
    # a final Softmax is cut off, and a pooling over the whole map becomes adaptive
    soft = entries["softmaxed"]
    assert soft["logits"] != "prob" and soft["classifier"] == "fc" and soft["global_pool"] == "adaptive"
    assert "labels" not in soft and "numbered 0-6" in text
    for name in entries:
        assert (root / "models" / f"{name}.py").is_file()
        assert "verified against onnxruntime" in added[name]
        assert f'zoo.create_model("{name}", pretrained=True)' in added[name].splitlines()[-1]
    assert not (ROOT / "zoo" / "models" / "mobile.py").exists()  # never into the package
    assert "to fill in before publishing: license, preprocessing.source" in added["squeeze"]


def test_added_models_load_fine_tune_and_serve_backbones(user, files):
    root, env, *_ = user
    code = textwrap.dedent(f"""
        import json, numpy, onnxruntime, torch, zoo
        out = {{}}
        for name, file, size in [("mobile", {str(files['mobilenet'])!r}, 64), ("squeeze", {str(files['squeezenet'])!r}, 64),
                                 ("softmaxed", {str(files['softmax'])!r}, 32)]:
            model = zoo.create_model(name, pretrained=True).eval()
            x = torch.randn(2, 3, size, size)
            session = onnxruntime.InferenceSession(file, providers=["CPUExecutionProvider"])
            ref = session.run(None, {{"image": x.numpy()}})[0]
            with torch.no_grad():
                got = model(x)
            if name == "softmaxed":
                got = got.softmax(1)
            torch.manual_seed(0)
            tuned = zoo.create_model(name, pretrained=True, num_classes=2).train()
            before = tuned.get_classifier().weight.detach().clone()
            optimizer = torch.optim.SGD(zoo.param_groups(tuned, 0.05, weight_decay=0.0))
            torch.nn.functional.cross_entropy(tuned(x), torch.tensor([0, 1])).backward()
            optimizer.step()  # one step of training the new head
            learned = bool((tuned.get_classifier().weight != before).any())
            tuned.eval()
            backbone = zoo.create_model(name, pretrained=True, features_only=True)
            with torch.no_grad():
                maps = backbone(x)
            out[name] = {{"error": float((got - torch.from_numpy(ref)).abs().max()), "classes": model.num_classes,
                         "labels": zoo.labels(model)[:2], "tuned": tuned(x).shape[1], "maps": len(maps),
                         "learned": learned,
                         "inferred": model.pretrained_cfg["inferred"]}}
        bigger = zoo.create_model("softmaxed", pretrained=True).eval()
        out["adaptive"] = list(bigger(torch.randn(1, 3, 48, 48)).shape)
        out["others"] = [list(zoo.create_model(n, pretrained=True).eval()(torch.randn(1, 3, s, s)).shape)
                         for n, s in (("free", 64), ("two", 32), ("web", 32))]
        print(json.dumps(out))
    """)
    # zoo add cached every model's weights: nothing is fetched again (the URL's server is gone)
    out = json.loads(run("-c", code, env={**env, "ZOO_OFFLINE": "1"}).stdout.splitlines()[-1])
    assert all(out[n]["error"] < 1e-4 for n in ("mobile", "squeeze", "softmaxed")), out
    assert [out[n]["classes"] for n in ("mobile", "squeeze", "softmaxed")] == [1000, 4, 7]
    assert out["mobile"]["labels"] == ["tench", "goldfish"] and out["squeeze"]["labels"] == ["cat", "dog"]
    assert out["softmaxed"]["labels"] == ["0", "1"]
    assert all(out[n]["tuned"] == 2 and out[n]["learned"] for n in ("mobile", "squeeze", "softmaxed")), out
    assert [out[n]["maps"] for n in ("mobile", "squeeze", "softmaxed")] == [5, 4, 1]  # one stage: a single conv
    assert out["adaptive"] == [1, 7] and out["others"] == [[1, 3], [1, 7], [1, 7]]
    image = root / "red.png"
    Image.new("RGB", (90, 70), (220, 20, 20)).save(image)
    predicted = zoo("predict", "squeeze", image, "--top", "4", env=env).stdout
    assert sorted(line.split()[-1] for line in predicted.splitlines()[1:]) == ["cat", "dog", "fox", "owl"]


def test_zoo_list_marks_yours_and_built_in(user, cli):
    root, env, *_ = user
    listed = cli("list", env=env)[1].splitlines()
    rows = {line.split()[0]: line.split()[3] for line in listed[1:] if line and not line.startswith("*")}
    assert rows["mobile"] == rows["squeeze"] == "yours" and rows["resnet50"] == "built-in*"
    assert listed[1].startswith("mobile")
    assert "unset ZOO_REGISTRY" in listed[-1]


def test_placeholders_are_refused_by_build_push(user, cli):
    root, env, *_ = user
    code, _, err = cli("build", "squeeze", "--push", "--namespace", "me", "--endpoint", "http://127.0.0.1:9",
                       "--out", root / "push", env=env)
    assert code == 1 and "squeeze: license, preprocessing.source" in err and "before publishing" in err


@pytest.mark.parametrize("kind,args,message", [
    ("free", [], r"input_size: the file's input 'image' is \?x3x\?x\?, its size left free; give one \(zoo add "
                 r"--input-size 3,224,224"),
    ("two", [], r"logits: the file has 2 outputs \('scores', 'features'\); say which one holds the class scores "
                r"\(zoo add --logits NAME"),
    ("detector", [], r"classifier: no layer with weights maps pooled features to the output 'map' \(6x16x16 per "
                     r"image\): this looks like a detector"),
    ("mobilenet", ["--input-size", "3,32,32"], r"input_size: \[3, 32, 32\] contradicts the file: the file's input "
                                               r"'image' is \?x3x64x64"),
])
def test_refusals_name_the_field_and_leave_nothing(files, tmp_path, cli, kind, args, message):
    env = {"ZOO_REGISTRY": str(tmp_path / "registry.yaml"), "ZOO_CACHE": str(tmp_path / "cache")}
    code, _, err = cli("add", files[kind], "--name", "x", *args, env=env)
    assert code == 1 and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "registry.yaml").exists() and not (tmp_path / "models" / "x.py").exists()


MINIMAL = """\
models:
  mini:
    source: {{file: softmax.onnx, urls: [{url}], sha256: {sha256}, size: {size}}}
    preprocessing: {{channel_order: RGB, value_range: 1, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], resize: 32,
                    crop: 32, source: my training script}}
{extra}"""


def _minimal(tmp_path, files, extra="") -> dict[str, str]:
    path = files["softmax"]
    import hashlib

    (tmp_path / "registry.yaml").write_text(MINIMAL.format(
        url=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), size=path.stat().st_size,
        extra=textwrap.indent(extra, "    ")))
    return {"ZOO_REGISTRY": str(tmp_path / "registry.yaml"), "ZOO_CACHE": str(tmp_path / "cache"),
            "ZOO_PINS": str(tmp_path / "none.json")}


def test_minimal_hand_written_entry(files, tmp_path, cli):
    env = _minimal(tmp_path, files)
    zoo("build", "--out", tmp_path / "build", env=env)
    source = (tmp_path / "models" / "mini.py").read_text()
    assert "# Read from the file (absent from the registry entry): input_size 3x32x32, logits" in source
    assert "classifier fc" in source and "ZOO_INFERRED = {'classifier': 'fc'" in source
    config = json.loads((tmp_path / "build" / "mini" / "config.json").read_text())
    assert config["num_classes"] == 7 and config["classifier"] == "fc"
    code = ("import torch, zoo; m = zoo.create_model('mini', pretrained=True); c = m.pretrained_cfg; "
            "print(c['inferred'], c['num_classes'], c['global_pool'], m(torch.randn(1, 3, 40, 40)).shape[1])")
    shown = run("-c", code, env=env).stdout.strip()
    assert shown == ("['input_size', 'logits', 'classifier', 'global_pool', 'description'] 7 adaptive 7"), shown
    info = cli("info", "mini", env=env)[1]
    assert "read from file" in info and "classifier      fc" in info


@pytest.mark.parametrize("extra,message", [
    ("input_size: [3, 48, 48]\n", r"mini: input_size: \[3, 48, 48\] contradicts the file: the file's input 'image' "
                                  r"is \?x3x32x32 \(softmax.onnx\)"),
    ("classifier: conv\n", r"mini: classifier: 'conv' is not a layer that maps the features to '.*'; the file's "
                           r"classifier is 'fc'"),
    ("logits: nowhere\n", r"mini: logits: no tensor 'nowhere' in the file \(its outputs: 'prob'\)"),
    ("labels: imagenet-1k\n", r"mini: labels: imagenet-1k has 1,000 classes, the file's '.*' has 7"),
])
def test_contradicting_fields_are_errors_naming_the_field(files, tmp_path, cli, extra, message):
    env = _minimal(tmp_path, files, extra)
    code, _, err = cli("build", "--out", tmp_path / "build", env=env)
    assert code == 1 and re.search(message, err), err
    assert not (tmp_path / "models" / "mini.py").exists()
