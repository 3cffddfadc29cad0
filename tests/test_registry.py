"""zoo/registry.yaml: the packaged registry is valid; malformed ones fail naming the entry and field."""
from __future__ import annotations

import copy

import pytest
import yaml

from zoo.registry import DEFAULT_REGISTRY, RegistryError, load_registry


def test_packaged_registry():
    registry = load_registry()
    assert list(registry) == ["squeezenet1_1", "densenet121", "resnet50", "googlenet",
                              "alexnet", "zfnet512", "vgg19", "inception_v2", "shufflenet"]
    squeeze = registry["squeezenet1_1"]
    assert squeeze.source.file == "squeezenet1.0-9.onnx" and "1.0" in squeeze.upstream
    assert squeeze.source.sha256.startswith("f2d3201f") and squeeze.source.size == 4_952_222
    assert registry["densenet121"].preprocessing.channel_order == "BGR"
    assert registry["googlenet"].preprocessing.std == (1.0, 1.0, 1.0)
    assert all(e.source.urls[0].startswith("https://huggingface.co/onnxmodelzoo/") for e in registry.values())
    assert all(e.preprocessing.source for e in registry.values())
    assert all(e.source.standin and e.source.size > 0 and len(e.source.urls) == 2 for e in registry.values())
    assert len({e.source.sha256 for e in registry.values()}) == 9
    assert registry["vgg19"].source.size == 574_674_712 and registry["vgg19"].source.sha256.startswith("cfb97260")
    assert registry["alexnet"].source.file == "bvlcalexnet-9.onnx" and registry["alexnet"].classifier == "fc8"
    # ShuffleNet's Caffe2 run normalizes 0-1 BGR pixels with the usual statistics in BGR order
    shuffle = registry["shufflenet"].preprocessing
    assert (shuffle.channel_order, shuffle.value_range, shuffle.mean) == ("BGR", 1, (0.406, 0.456, 0.485))
    # no accuracy without a published figure for the file
    assert registry["inception_v2"].accuracy is None and registry["shufflenet"].accuracy is None
    assert all(e.accuracy.source for e in registry.values() if e.accuracy)


def _write(tmp_path, mutate):
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    data = copy.deepcopy(data)
    mutate(data["models"])
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("mutate,message", [
    (lambda m: m["resnet50"].pop("source"), r"resnet50: missing field 'source'"),
    (lambda m: m["resnet50"].pop("preprocessing"), r"resnet50: missing field 'preprocessing'"),
    (lambda m: m["resnet50"].update(labels=["only one"]), r"resnet50\.labels: .*imagenet-1k or a list of class names"),
    (lambda m: m["resnet50"].update(classifier="fc; import os"), r"resnet50\.classifier: .*a layer name"),
    (lambda m: m["googlenet"].update(colour="blue"), r"googlenet: unknown field\(s\) 'colour'"),
    (lambda m: m["densenet121"]["source"].update(sha256="abc"), r"densenet121\.source\.sha256: .*64 hex digits"),
    (lambda m: m["densenet121"]["source"].update(size="big"), r"densenet121\.source\.size: expected"),
    (lambda m: m["squeezenet1_1"]["preprocessing"].update(channel_order="GBR"), r"squeezenet1_1\.preprocessing\.channel_order"),
    (lambda m: m["squeezenet1_1"]["preprocessing"].update(mean=[1, 2]), r"squeezenet1_1\.preprocessing\.mean"),
    (lambda m: m["resnet50"].update(global_pool="avg"), r"resnet50\.global_pool: invalid value 'avg'"),
    (lambda m: m.update({"Bad Name": m["resnet50"]}), r"model name 'Bad Name'"),
])
def test_invalid_entries(tmp_path, mutate, message):
    """A broken entry is an error for its own users only; the other entries stay usable."""
    registry = load_registry(_write(tmp_path, mutate))
    (bad,) = registry.errors
    with pytest.raises(RegistryError, match=message) as err:
        registry.entry(bad)
    assert "registry.yaml" in str(err.value)
    assert bad not in registry and len(registry) >= len(load_registry()) - 1


def test_duplicate_names_are_rejected(tmp_path):
    text = DEFAULT_REGISTRY.read_text()
    block = text[text.index("  resnet50:"):text.index("  googlenet:")]
    path = tmp_path / "registry.yaml"
    path.write_text(text + "\n" + block)
    with pytest.raises(RegistryError, match=r"duplicate key 'resnet50'"):
        load_registry(path)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(bad)


def test_readme_model_table_lists_every_model():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("### Models"):readme.index("### Fine-tuning")]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == list(load_registry())  # rows[0] is the header
