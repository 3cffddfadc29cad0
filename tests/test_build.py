"""scripts/build.py: offline build, reproducible sources, incremental skip, a tenth entry, source checks."""
from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from safetensors import safe_open

from zoo.publish.build import BuildError, Options, build, publish_entry
from zoo.registry import DEFAULT_REGISTRY, load_registry

from .conftest import ZOO_MODELS, export, randomize_
from .helpers import run_onnxruntime, zoo_cli
from .servers import WritableHub

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "zoo" / "models"


# offline_build (conftest): one offline build of every registry entry per test run, shared with other files.


def test_offline_build_reproduces_committed_sources(offline_build):
    opts, results = offline_build
    assert [r.name for r in results] == ZOO_MODELS and len(ZOO_MODELS) == 9
    assert [r.status for r in results] == ["built"] * 9
    for name in ZOO_MODELS:
        generated = (opts.models_dir / f"{name}.py").read_bytes()
        assert generated == (COMMITTED / f"{name}.py").read_bytes(), f"zoo/models/{name}.py is stale: rebuild it"
    assert (opts.models_dir / "__init__.py").read_bytes() == (COMMITTED / "__init__.py").read_bytes()


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_outputs_per_model(offline_build, built_modules, cut_standins, name):
    opts, results = offline_build
    registry = load_registry()
    (r,) = [r for r in results if r.name == name]  # one test per model: each well under a minute
    folder = opts.out / r.name
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "build.json", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["standin"] is True and config["num_classes"] == 1000
    assert config["source"]["pinned_sha256"] == registry[r.name].source.sha256
    assert config["verification"]["passed"] and len(config["verification"]["rows"]) == 2
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: ") and "Stand-in weights" in card and "datasets:\n- imagenet-1k" in card
    model = built_modules[r.name]
    assert type(model).__name__ == config["class_name"] and config["architecture"] == r.name
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert set(weights.keys()) == set(model.state_dict())
    assert hasattr(model, registry[r.name].classifier)
    # The figure the build reports, measured again here on the files it wrote (not read back from them).
    x = np.random.default_rng(3).standard_normal((1, 3, *registry[r.name].input_size[1:])).astype(np.float32)
    expected = run_onnxruntime(cut_standins[r.name], {_input_name(cut_standins[r.name]): x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    remeasured = float(np.abs(got - expected).max() / np.abs(expected).max())
    assert remeasured < 1e-4 and r.worst_error < 1e-4, (r.name, remeasured, r.worst_error)
    assert max(row["relative"] for row in config["verification"]["rows"]) == r.worst_error


def _input_name(path: Path) -> str:
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}  # IR-3 files list their weights as inputs too
    return next(i.name for i in graph.input if i.name not in weights)


def test_rerun_skips_and_a_changed_entry_rebuilds(offline_build, tmp_path):
    import shutil

    built, _ = offline_build
    opts = Options(out=tmp_path / "out", offline=True, models_dir=tmp_path / "models")  # the shared build stays as is
    shutil.copytree(built.models_dir, opts.models_dir)
    for name in ("squeezenet1_1", "googlenet"):
        shutil.copytree(built.out / name, opts.out / name)
    again = build(Options(out=opts.out, offline=True, models_dir=opts.models_dir, names=["squeezenet1_1", "googlenet"]))
    assert [r.status for r in again] == ["skipped", "skipped"]
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    data["models"]["googlenet"]["description"] += " Edited."
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(data))
    changed = build(Options(out=opts.out, offline=True, models_dir=opts.models_dir, registry=registry,
                            names=["squeezenet1_1", "googlenet"]))
    assert [r.status for r in changed] == ["skipped", "built"]
    assert "Edited." in (opts.out / "googlenet" / "README.md").read_text()


def _tenth_entry(sha: str, size: int) -> dict:
    """torchvision's ResNet-18, not in the registry: a copy of an entry with every model-specific field replaced."""
    entry = copy.deepcopy(yaml.safe_load(DEFAULT_REGISTRY.read_text())["models"]["resnet50"])
    entry.update(
        description="torchvision ResNet-18 (random weights), a tenth model added by editing the registry only.",
        upstream="torchvision.models.resnet18, exported by torch.onnx.export (opset 13)",
        license="BSD-3-Clause", classifier="fc", logits="logits", input_size=[3, 224, 224],
        source={"file": "resnet18-tv-13.onnx", "urls": ["https://example.invalid/resnet18-tv-13.onnx"],
                "sha256": sha, "size": size},
        preprocessing={"channel_order": "RGB", "value_range": 1, "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "resize": 256, "crop": 224,
                       "source": "torchvision's ImageNet weights documentation."})
    entry.pop("accuracy", None)
    entry.pop("global_pool", None)
    return entry


def test_a_tenth_entry_builds_without_code_changes(tmp_path):
    import torchvision

    from zoo.weights.download import file_sha256

    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    exported = export(randomize_(torchvision.models.resnet18()), onnx_dir / "resnet18-tv-13.onnx", 13)
    assert "resnet18" not in load_registry()
    registry = tmp_path / "registry.yaml"
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    data["models"]["resnet18"] = _tenth_entry(file_sha256(exported), exported.stat().st_size)
    registry.write_text(yaml.safe_dump(data, sort_keys=False))
    assert list(load_registry(registry)) == [*ZOO_MODELS, "resnet18"]
    models = tmp_path / "models"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build.py"), "resnet18", "--registry", str(registry),
                           "--source", str(onnx_dir), "--out", str(tmp_path / "out"), "--models-dir", str(models)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resnet18" in done.stdout and "built" in done.stdout
    source = (models / "resnet18.py").read_text()
    assert "class Resnet18(nn.Module)" in source and "self.fc = nn.Linear(512, 1000)" in source
    assert sorted(p.name for p in models.glob("*.py")) == ["__init__.py", "resnet18.py"]  # only what was asked
    config = json.loads((tmp_path / "out" / "resnet18" / "config.json").read_text())
    assert config["standin"] is False and config["source"]["sha256"] == file_sha256(exported)
    assert config["verification"]["passed"]


def test_source_folder_with_wrong_file_fails_loudly(tmp_path):
    from zoo.publish.standins import build_standin

    mine = build_standin("squeezenet", tmp_path / "src" / "squeezenet1.0-9.onnx")  # not the pinned bytes
    with pytest.raises(BuildError) as error:
        build(Options(out=tmp_path / "out", source_dir=tmp_path / "src", models_dir=tmp_path / "models",
                      names=["squeezenet1_1"]))
    # the message names the user's file and does not read as if it had been deleted: only the copy was
    assert str(error.value).startswith(f"squeezenet1_1: {mine}: expected 4,952,222 bytes, got "), error.value
    assert "(left as it is; only the copy was removed)" in str(error.value) and mine.is_file()
    assert not (tmp_path / "out" / "squeezenet1_1").exists()
    assert not (tmp_path / "models" / "squeezenet1_1.py").exists()


def test_unknown_name(tmp_path):
    with pytest.raises(BuildError, match="unknown model"):
        build(Options(out=tmp_path, offline=True, names=["nope"], models_dir=tmp_path / "m"))


class RecordingPublisher:
    def __init__(self, endpoint):
        self.endpoint, self.calls = endpoint, []

    def publish(self, folder, repo, message):
        self.calls.append((sorted(p.name for p in folder.iterdir()), repo))
        return "f" * 40


def test_standins_are_never_pushed_to_a_real_hub(offline_build, tmp_path):
    opts, results = offline_build
    entry = load_registry()["resnet50"]
    publisher = RecordingPublisher("https://huggingface.co")
    with pytest.raises(BuildError, match="refusing to push stand-in weights"):
        publish_entry(entry, opts.out / "resnet50", Options(out=opts.out, publisher=publisher, pins=tmp_path / "p.json",
                                                            namespace="someone"))
    assert publisher.calls == [] and not (tmp_path / "p.json").exists()
    loopback = RecordingPublisher("http://127.0.0.1:9999")
    with pytest.raises(BuildError, match="--push needs a Hub namespace"):
        publish_entry(entry, opts.out / "resnet50", Options(out=opts.out, publisher=loopback, pins=tmp_path / "p.json"))
    with WritableHub() as hub:  # a publisher that claims success for an upload the Hub does not serve
        loopback.endpoint = hub.url
        with pytest.raises(BuildError, match=r"(?s)resnet50: uploaded, but not as built: someone/resnet50@f{40} on "
                                              r"http://127.0.0.1:\d+: downloading model.safetensors back failed "
                                              r"\(RepositoryNotFoundError.*p.json not changed"):
            publish_entry(entry, opts.out / "resnet50",
                          Options(out=opts.out, publisher=loopback, pins=tmp_path / "p.json", namespace="someone"))
    assert loopback.calls[-1][1] == "someone/resnet50" and not (tmp_path / "p.json").exists()


class Crash(Exception):
    pass


def test_a_build_interrupted_anywhere_leaves_each_model_old_or_new(offline_build, tmp_path, monkeypatch):
    """Fail the N-th file replacement of a rebuild, for every N: after recovery the source and the output
    folder always belong together (old pair or new pair), and a re-run completes."""
    import os
    import shutil

    from zoo.publish.build import recover

    opts, _ = offline_build
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    data["models"]["googlenet"]["source"]["file"] = "googlenet-renamed.onnx"  # changes the source's header
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(data))
    real_replace = os.replace
    outcomes = set()
    for n in range(40):
        out, models = tmp_path / f"out{n}", tmp_path / f"models{n}"
        shutil.copytree(opts.out / "googlenet", out / "googlenet")  # not the other 1.2 GB of weights, 40 times
        models.mkdir()
        for name in ("__init__.py", "googlenet.py"):
            shutil.copyfile(opts.models_dir / name, models / name)
        old_source = (models / "googlenet.py").read_bytes()
        calls = {"n": 0}

        def failing_replace(src, dst, _n=n, _calls=calls):
            _calls["n"] += 1
            if _calls["n"] > _n:
                raise Crash(f"replace #{_calls['n']}")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", failing_replace)
        try:
            build(Options(out=out, offline=True, models_dir=models, registry=registry, names=["googlenet"]))
            finished = True
        except Crash:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        recover(out)
        source = (models / "googlenet.py").read_bytes()
        stamp = json.loads((out / "googlenet" / "build.json").read_text())
        assert stamp["source_py_sha256"] == hashlib.sha256(source).hexdigest(), f"mixed after failure #{n + 1}"
        assert not list(out.glob(".commit-*")) and not list(out.glob(".*.old")) and not list(out.glob(".build-*"))
        outcomes.add("new" if source != old_source else "old")
        if finished:
            break
        again = build(Options(out=out, offline=True, models_dir=models, registry=registry, names=["googlenet"]))
        assert again[0].status in ("built", "skipped")
        assert b"googlenet-renamed.onnx" in (models / "googlenet.py").read_bytes()
    assert finished and outcomes == {"old", "new"}


def test_cli_build_skips_what_is_unchanged_unless_forced(tmp_path):
    """`zoo build --force` rebuilds an entry whose build stamp says nothing changed (a plain rerun skips it)."""
    def cli(*extra):
        done = zoo_cli("build", "squeezenet1_1", "--offline", "--out", tmp_path / "out", "--models-dir",
                       tmp_path / "models", *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()[1], (tmp_path / "out" / "squeezenet1_1" / "build.json").stat().st_mtime_ns

    first, stamped = cli()
    rerun, unchanged = cli()
    forced, rebuilt = cli("--force")
    assert (first, rerun, forced) == ("built", "skipped", "built")
    assert unchanged == stamped and rebuilt > stamped
