"""zoo/registry.yaml: the packaged registry is valid; malformed ones fail naming the entry and field."""
from __future__ import annotations

import copy

import pytest
import yaml

from zoo.registry import DEFAULT_REGISTRY, RegistryError, load_registry


def test_packaged_registry():
    registry = load_registry()
    assert list(registry) == ["squeezenet1_1", "densenet121", "resnet50", "googlenet"]
    squeeze = registry["squeezenet1_1"]
    assert squeeze.source.file == "squeezenet1.0-9.onnx" and "1.0" in squeeze.upstream
    assert squeeze.source.sha256.startswith("f2d3201f") and squeeze.source.size == 4_952_222
    assert registry["densenet121"].preprocessing.channel_order == "BGR"
    assert registry["googlenet"].preprocessing.std == (1.0, 1.0, 1.0)
    assert all(e.source.urls[0].startswith("https://huggingface.co/onnxmodelzoo/") for e in registry.values())
    assert all(e.preprocessing.source for e in registry.values())


def _write(tmp_path, mutate):
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    data = copy.deepcopy(data)
    mutate(data["models"])
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("mutate,message", [
    (lambda m: m["resnet50"].pop("logits"), r"resnet50: missing field 'logits'"),
    (lambda m: m["googlenet"].update(colour="blue"), r"googlenet: unknown field\(s\) 'colour'"),
    (lambda m: m["densenet121"]["source"].update(sha256="abc"), r"densenet121\.source\.sha256: .*64 hex digits"),
    (lambda m: m["densenet121"]["source"].update(size="big"), r"densenet121\.source\.size: expected"),
    (lambda m: m["squeezenet1_1"]["preprocessing"].update(channel_order="GBR"), r"squeezenet1_1\.preprocessing\.channel_order"),
    (lambda m: m["squeezenet1_1"]["preprocessing"].update(mean=[1, 2]), r"squeezenet1_1\.preprocessing\.mean"),
    (lambda m: m["resnet50"]["hub"].update(repo="no-slash"), r"resnet50\.hub\.repo"),
    (lambda m: m.update({"Bad Name": m["resnet50"]}), r"model name 'Bad Name'"),
])
def test_invalid_entries(tmp_path, mutate, message):
    with pytest.raises(RegistryError, match=message) as err:
        load_registry(_write(tmp_path, mutate))
    assert "registry.yaml" in str(err.value)


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
