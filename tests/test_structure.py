"""Block discovery: repeated blocks become classes, stages become nn.Sequential, results stay exact."""
from __future__ import annotations

import collections
import re
import warnings
from functools import partial

import numpy as np
import pytest
import torch
import torchvision
from onnx import helper

from zoo.convert import convert as convert_, load as load_, verify

from .conftest import ZOO_GRAPHS, randomize_
from .helpers import make_model, tensor

# Structure is asked for explicitly, so these tests say what they test whatever the default.
convert, load = partial(convert_, structure=True), partial(load_, structure=True)

# graph -> (the block class, how many instances, most lines the generated file may have)
EXPECTED = {
    "squeezenet": ("Fire", 8, 60),
    "resnet50": ("Bottleneck", 16, 110),
    "inception_v1": ("Inception", 9, 110),
    "densenet121": ("DenseLayer", 58, 110),
    "shufflenet": ("Bottleneck", 13, 100),  # names are counters (gconv1_7): structure alone proposes the units
}


def _classes(module: torch.nn.Module) -> collections.Counter:
    return collections.Counter(type(m).__name__ for m in module.modules())


@pytest.mark.parametrize("graph", sorted(EXPECTED))
def test_zoo_graphs_get_their_blocks_back(standins, graph, tmp_path):
    cls, count, max_lines = EXPECTED[graph]
    result = convert(standins[graph], tmp_path, name=graph, outputs=[ZOO_GRAPHS[graph]])
    source = result.source_path.read_text()
    module = load(standins[graph], outputs=[ZOO_GRAPHS[graph]])
    assert _classes(module)[cls] == count, _classes(module)
    assert f"class {cls}(nn.Module):" in source
    assert len(source.splitlines()) <= max_lines
    assert max(len(line) for line in source.splitlines()) <= 120


@pytest.mark.parametrize("graph", sorted(EXPECTED))
def test_flat_output_on_request_computes_the_same(standins, graph, tmp_path):
    flat = convert(standins[graph], tmp_path, name=graph, outputs=[ZOO_GRAPHS[graph]], structure=False)
    assert re.findall(r"^class ", flat.source_path.read_text(), re.M) == ["class "]
    structured = load(standins[graph], outputs=[ZOO_GRAPHS[graph]])
    plain = load(standins[graph], outputs=[ZOO_GRAPHS[graph]], structure=False)
    assert "." not in "".join(k.rsplit(".", 1)[0] for k in plain.state_dict())
    assert sorted(t.numel() for t in plain.state_dict().values()) == \
        sorted(t.numel() for t in structured.state_dict().values())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(structured(x), plain(x), rtol=0, atol=0)


def test_state_dict_keys_follow_the_blocks(standins):
    keys = load(standins["squeezenet"], outputs=[ZOO_GRAPHS["squeezenet"]]).state_dict()
    assert "fire2.squeeze1x1.weight" in keys and "fire9.expand3x3.bias" in keys
    keys = load(standins["densenet121"], outputs=[ZOO_GRAPHS["densenet121"]]).state_dict()
    assert "conv4.23.x2.weight" in keys


def test_regenerating_is_byte_identical_and_weights_do_not_matter(tmp_path):
    """Twice from one file, and from files with other weights (a stand-in and the real file differ only so)."""
    from zoo.publish.standins import build_standin

    sources = []
    for seed in (1, 1, 2):
        path = build_standin("resnet50", tmp_path / f"s{seed}" / "resnet50.onnx", seed=seed)
        sources.append(convert(path, tmp_path / f"out{len(sources)}", name="g", outputs=["r174"],
                               source_sha256="0" * 64).source_path.read_bytes())
    assert sources[0] == sources[1] == sources[2]
    assert b"class Bottleneck(nn.Module):" in sources[0]


def _residual_blocks(path, prefixes, activations, channels=4):
    """x -> [conv, relu, conv, + input, activation] per block, weights named '<prefix>.conv1.weight'
    ('<prefix>_conv1' when the prefix is an exporter's meaningless 'onnx::' name)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], {}, "x"
    for i, (prefix, act) in enumerate(zip(prefixes, activations)):
        sep = "_" if prefix.startswith("onnx::") else "."
        for conv in ("conv1", "conv2"):
            inits[f"{prefix}{sep}{conv}.weight"] = rng.normal(0, 0.3, (channels, channels, 3, 3)).astype(np.float32)
            inits[f"{prefix}{sep}{conv}.bias"] = rng.normal(0, 0.1, (channels,)).astype(np.float32)
        nodes += [
            helper.make_node("Conv", [x, f"{prefix}{sep}conv1.weight", f"{prefix}{sep}conv1.bias"], [f"a{i}"],
                             pads=[1] * 4),
            helper.make_node("Relu", [f"a{i}"], [f"b{i}"]),
            helper.make_node("Conv", [f"b{i}", f"{prefix}{sep}conv2.weight", f"{prefix}{sep}conv2.bias"], [f"c{i}"],
                             pads=[1] * 4),
            helper.make_node("Add", [f"c{i}", x], [f"d{i}"]),
            helper.make_node(act, [f"d{i}"], [f"y{i}"]),
        ]
        x = f"y{i}"
    make_model(nodes, [tensor("x", ["batch", channels, 6, 6])], [tensor(x, ["batch", channels, 6, 6])], inits,
               path=path)
    return path


SMALL = {
    # name: (prefixes, activations, {class: instances} expected)
    "three_alike": (["layer1.0", "layer1.1", "layer1.2"], ["Relu"] * 3, {"BasicBlock": 3, "Sequential": 1}),
    "one_block": (["block.0"], ["Relu"], {}),
    # meaningless names: structure alone proposes the blocks, a stage of them is numbered
    "unnamed": (["onnx::Conv_1", "onnx::Conv_2", "onnx::Conv_3"], ["Relu"] * 3, {"BasicBlock": 3, "Sequential": 1}),
    "unnamed_other_ops": (["onnx::Conv_1", "onnx::Conv_2", "onnx::Conv_3"], ["Relu", "Sigmoid", "Relu"],
                          {"BasicBlock": 2}),
    "same_names_other_ops": (["b1", "b2", "b3"], ["Relu", "Sigmoid", "Relu"], {"B": 2}),
    "hostile_names": (['a"b.0', "a'b.1; import os"], ["Relu"] * 2, None),
}


@pytest.mark.parametrize("case", sorted(SMALL))
def test_small_graphs_stay_exact_whether_or_not_blocks_form(case, tmp_path):
    prefixes, acts, expected = SMALL[case]
    path = _residual_blocks(tmp_path / f"{case}.onnx", prefixes, acts)
    module = load(path)
    report = verify(path, module, batch_sizes=(1, 3))
    assert report.passed, str(report)
    found = {k: v for k, v in _classes(module).items() if k not in ("Conv2d", type(module).__name__)}
    if expected is not None:
        assert found == expected
    source = convert(path, tmp_path / "out").source_path.read_text()
    assert "import os" not in source and '"' not in source.replace('"""', "")


def test_a_stage_of_alike_blocks_is_a_sequential(tmp_path):
    path = _residual_blocks(tmp_path / "m.onnx", ["layer1.0", "layer1.1", "layer1.2"], ["Relu"] * 3)
    module = load(path)
    assert isinstance(module.layer1, torch.nn.Sequential) and len(module.layer1) == 3
    assert "layer1.2.conv2.weight" in module.state_dict()


KEYED = {
    "resnet18": {}, "resnet50": {}, "squeezenet1_1": {}, "densenet121": {}, "mobilenet_v2": {},
    "efficientnet_b0": {}, "googlenet": {"aux_logits": False, "init_weights": False}, "mobilenet_v3_small": {},
    "convnext_tiny": {}, "regnet_y_400mf": {},  # RegNet's 'block1-0' is no identifier: a ModuleDict key
    "shufflenet_v2_x0_5": {},  # its channel shuffle's integer constants are literals, not state
}


@pytest.mark.parametrize("arch", sorted(KEYED))
def test_torchvision_exports_load_torchvision_state_dicts(arch, tmp_path):
    original = randomize_(getattr(torchvision.models, arch)(**KEYED[arch]))
    path = tmp_path / f"{arch}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(original, (torch.randn(1, 3, 224, 224),), str(path), opset_version=17, dynamo=False,
                          do_constant_folding=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    module = load(path)
    fresh = randomize_(getattr(torchvision.models, arch)(**KEYED[arch]), seed=1)
    module.load_state_dict(fresh.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = fresh(x), module(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


# torchvision exports get their blocks back: tests/test_torchvision_exports.py (BLOCKS), beside their round trip.


@pytest.mark.parametrize("names,keys", [
    (["a.0", "a.1"], ["a.0.weight", "a.1.weight"]),  # a numbered container: nn.Sequential
    (["a.p", "a.q"], ["a.p.weight", "a.q.weight"]),  # a named one: nn.ModuleDict
    (["a.0", "a.conv"], ["a_0.weight", "a_conv.weight"]),  # both in one container: no tree, flat names
])
def test_export_paths_become_containers_only_where_they_form_one(tmp_path, names, keys):
    rng = np.random.default_rng(0)
    inits = {f"{n}.weight": rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32) for n in names}
    nodes = [helper.make_node("Conv", ["x", f"{names[0]}.weight"], ["h"]),
             helper.make_node("Conv", ["h", f"{names[1]}.weight"], ["y"])]
    path = tmp_path / "m.onnx"
    make_model(nodes, [tensor("x", ["batch", 4, 3, 3])], [tensor("y", ["batch", 4, 3, 3])], inits, path=path,
               producer_name="pytorch")
    module = load(path)
    assert sorted(module.state_dict()) == keys
    assert verify(path, module, batch_sizes=(1, 2)).passed


def test_a_block_that_downsamples_beside_one_that_does_not_is_named_for_it(standins, tmp_path):
    module = load(standins["inception_v2"], outputs=[ZOO_GRAPHS["inception_v2"]])
    found = _classes(module)
    assert found["Inception"] == 7 and found["InceptionReduction"] == 2, found


def test_units_named_by_counters_become_classes_from_structure(standins, tmp_path):
    """ShuffleNet's layers are gconv1, gconv1_2, ... gconv1_32: only structure can find its 16 units. The
    strided units (concatenating their pooled input) are one class, the residual ones another; each stage
    opens with its strided unit, as torchvision's stages do."""
    module = load(standins["shufflenet"], outputs=[ZOO_GRAPHS["shufflenet"]])
    found = _classes(module)
    assert found["Bottleneck"] == 13 and found["BottleneckReduction"] == 3, found
    assert [type(m).__name__ for m in module.stage2] == ["BottleneckReduction"] + ["Bottleneck"] * 7
    keys = module.state_dict()
    assert "stage1.0.avgpool" not in keys and "stage1.0.conv1.weight" in keys and "stage3.3.bn3.running_var" in keys
    x = torch.randn(2, 3, 224, 224)
    flat = load(standins["shufflenet"], outputs=[ZOO_GRAPHS["shufflenet"]], structure=False)
    with torch.no_grad():
        torch.testing.assert_close(module(x), flat(x), rtol=0, atol=0)
