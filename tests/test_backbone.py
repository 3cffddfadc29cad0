"""Zoo models as backbones (issue 13): features_only and feature_info, forward_intermediates, in_chans, head
options, parameter groups with layer-wise learning-rate decay, and fine-tuning with them."""
from __future__ import annotations

import copy
import json
import math
import pickle

import pytest
import torch
from torch import fx
from torch.overrides import TorchFunctionMode
from torchvision.models.feature_extraction import NodePathTracer

import zoo
from zoo.modeling.backbone import traceable
from zoo.publish.hub import save_pretrained

from .conftest import ZOO_MODELS
from .helpers import assert_outputs_match

# One model per kind of pooling head: a pooling function (ResNet), a 1x1-conv classifier on the pooled map
# (DenseNet), the classifier before the pooling (SqueezeNet), a pooling layer plus Caffe's crop (GoogLeNet; the
# Inception v2 and ShuffleNet heads are the same pooling layer without the crop).
POOLING_HEADS = ["resnet50", "densenet121", "squeezenet1_1", "googlenet"]


def _full_model_values(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every intermediate tensor of the unpruned model, by the graph node names feature_info reports."""
    tracer = NodePathTracer()
    graph = tracer.trace(traceable(model))
    names = {node.name: q for node, q in tracer.node_to_qualname.items()}
    values = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.name in names:
                values[names[node.name]] = out
            return out

    Recorder(fx.GraphModule(tracer.root, graph)).run(x)
    return values


def _hooked(model: torch.nn.Module, info, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """The stage tensors as forward (output) and forward-pre (input) hooks on the full model's layers see them."""
    seen, handles = {}, []
    for d in info:
        module = model.get_submodule(d["module"]) if d["hook_type"] else None
        if d["hook_type"] == "forward":
            handles.append(module.register_forward_hook(lambda m, a, out, i=d["index"]: seen.setdefault(i, out)))
        elif d["hook_type"] == "forward_pre":
            handles.append(module.register_forward_pre_hook(lambda m, a, i=d["index"]: seen.setdefault(i, a[0])))
    model(x)
    for h in handles:
        h.remove()
    return seen


def _layer_inputs_and_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, a, out: seen.extend([*a[:1], out]))
               for m in model.modules() if not list(m.children())]
    model(x)
    for h in handles:
        h.remove()
    return [t for t in seen if isinstance(t, torch.Tensor)]


class _EagerCalls(TorchFunctionMode):
    """Every torch function's tensor result during an eager forward, by the function's name: an independent
    record (no fx) for the stages that are a function's output rather than a layer's."""

    def __init__(self):
        super().__init__()
        self.results: dict[str, list[torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.results.setdefault(getattr(func, "__name__", "").strip("_"), []).append(out)
        return out


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_features_only_for_every_model(name):
    torch.manual_seed(0)
    full = zoo.create_model(name).eval()
    torch.manual_seed(0)
    backbone = zoo.create_model(name, features_only=True).eval()
    info = backbone.feature_info
    assert info.get_dicts() == full.feature_info.get_dicts() and len(info) >= 4
    reductions = info.reduction()
    assert reductions == sorted(set(reductions)) and reductions[-1] in (16, 32)
    assert backbone.pretrained_cfg["model_args"] == {"features_only": True, "out_indices": list(range(len(info)))}

    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = backbone(x)
        values = _full_model_values(full, x)
        hooked = _hooked(full, info, x)
        with _EagerCalls() as calls:
            full(x)
        layer_tensors = _layer_inputs_and_outputs(full, x)
    assert isinstance(feats, list) and len(feats) == len(info)
    # Every stage with a hook point was seen by its hook; the others are a function's output in forward().
    assert set(hooked) == {d["index"] for d in info if d["hook_type"]}, (sorted(hooked), info)
    for f, d in zip(feats, info):
        assert f.shape[1] == d["num_chs"]
        assert abs(math.log2(224 / f.shape[2]) - math.log2(d["reduction"])) < 0.5, (f.shape, d)
        assert torch.equal(f, values[d["node"]]), d  # exactly the full model's tensor
        if d["hook_type"]:
            assert torch.equal(f, hooked[d["index"]]), d
        else:
            function = d["node"].rsplit(".", 1)[-1].rstrip("0123456789").rstrip("_")
            assert any(r.shape == f.shape and torch.equal(r, f) for r in calls.results.get(function, [])), d
            # no hook point was missed: no layer takes or gives this tensor
            assert not any(t.shape == f.shape and torch.equal(t, f) for t in layer_tensors), d

    # A non-square size: same channels, the same reductions in each direction.
    y = torch.randn(1, 3, 128, 192)
    feats = backbone(y)
    for f, d in zip(feats, info):
        assert f.shape[1] == d["num_chs"]
        assert abs(math.log2(128 / f.shape[2]) - math.log2(d["reduction"])) < 0.5
        assert abs(math.log2(192 / f.shape[3]) - math.log2(d["reduction"])) < 0.5

    # Gradients reach the first layer through every feature map.
    backbone.train()
    sum(f.float().mean() for f in backbone(y)).backward()
    first_name, first = next(iter(backbone.named_parameters()))
    assert first_name == next(iter(full.named_parameters()))[0]
    assert first.grad is not None and first.grad.abs().sum() > 0

    # Layers after the last requested stage are gone, not just unused.
    kept = set(backbone.state_dict())
    assert kept < set(full.state_dict()) and not any(k.startswith(full.classifier_name + ".") for k in kept)
    first_only = zoo.create_model(name, features_only=True, out_indices=(0,))
    assert first_only.feature_info.channels() == info.channels()[:1]
    assert len(first_only.state_dict()) < len(kept)


@pytest.mark.parametrize("name", ["resnet50", "googlenet"])
def test_forward_intermediates_and_out_indices(name):
    torch.manual_seed(1)
    full = zoo.create_model(name).eval()
    torch.manual_seed(1)
    picked = zoo.create_model(name, features_only=True, out_indices=(1, -1)).eval()
    n = len(full.feature_info)
    assert picked.feature_info.out_indices == (1, n - 1)
    assert picked.feature_info.channels() == [full.feature_info[1]["num_chs"], full.feature_info[n - 1]["num_chs"]]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        final, inter = full.forward_intermediates(x, indices=(1, n - 1))
        feats = picked(x)
        only = full.forward_intermediates(x, indices=[0], intermediates_only=True)
    assert torch.equal(inter[0], feats[0]) and torch.equal(inter[1], feats[1]) and torch.equal(final, feats[1])
    assert len(only) == 1 and only[0].shape[1] == full.feature_info[0]["num_chs"]
    with pytest.raises(ValueError, match=rf"^indices must hold stage indices in 0\.\.{n - 1} \(or -{n}\.\.-1\); got {n}\."):
        full.forward_intermediates(x, indices=(n,))


@pytest.mark.parametrize("make, message", [
    (lambda: zoo.create_model("resnet50", features_only=True, out_indices=(1, 9)),
     r"out_indices must hold stage indices in 0\.\.4 \(or -5\.\.-1\); got 9\. "
     r"resnet50's stages \(channels/reduction\): 0: 64ch/2, 1: 256ch/4"),
    (lambda: zoo.create_model("resnet50", features_only=True, out_indices=(3, 1)), "out_indices must be increasing"),
    (lambda: zoo.create_model("resnet50", out_indices=(1,)), "out_indices is for features_only=True"),
    (lambda: zoo.create_model("squeezenet1_1", in_chans=0), "in_chans must be an integer >= 1, got 0"),
    (lambda: zoo.create_model("resnet50", global_pool="sum"),
     r"global_pool must be one of 'avg', 'max', 'avgmax', '', got 'sum'"),
    (lambda: zoo.create_model("resnet50", drop_rate=1.5), r"drop_rate must be a number in \[0, 1\), got 1.5"),
    (lambda: zoo.create_model("resnet50", global_pool=""), "global_pool='' .*needs num_classes=0"),
    (lambda: zoo.create_model("resnet50", features_only=True, drop_rate=0.1), "features_only=True models have no head"),
    (lambda: zoo.create_model("alexnet", global_pool="max"), r"alexnet's head does not pool .*6x6 map"),
    (lambda: zoo.create_model("resnet50").reset_classifier(-1), "num_classes must be an integer >= 0"),
], ids=["out_indices_range", "out_indices_order", "out_indices_without_features", "in_chans", "global_pool",
        "drop_rate", "empty_pool", "features_head", "alexnet_pool", "num_classes"])
def test_bad_backbone_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", ["squeezenet1_1", "resnet50"])
def test_in_chans_grey_equals_repeated_grey(name, tmp_path, cut_standins):
    """The stand-in weights (converted from the registry's stand-in ONNX file), adapted to one channel: the grey
    image gives what the 3-channel model gives for the grey image repeated over its channels."""
    from zoo.convert import load

    standin = zoo.create_model(name)
    standin.load_state_dict(load(cut_standins[name], structure=True).state_dict())
    save_pretrained(standin, tmp_path / "w")
    rgb = zoo.create_model(name, pretrained=tmp_path / "w").eval()
    grey = zoo.create_model(name, pretrained=tmp_path / "w", in_chans=1).eval()
    assert grey.pretrained_cfg["input_size"] == [1, 224, 224] and grey.pretrained_cfg["model_args"] == {"in_chans": 1}
    x = torch.rand(2, 1, 224, 224) * 255
    with torch.no_grad():
        expected = rgb(x.expand(-1, 3, -1, -1))
        assert expected.std() > 0 and not torch.equal(expected[0], expected[1])  # live activations
        torch.testing.assert_close(grey(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 1, H, W\)"):
        grey(torch.randn(1, 3, 224, 224))

    four = zoo.create_model(name, pretrained=tmp_path / "w", in_chans=4).eval()
    w3, w4 = next(rgb.parameters()), next(four.parameters())
    assert w4.shape[1] == 4 and torch.allclose(w4[:, 3], w3[:, 0] * 3 / 4)
    save_pretrained(four, tmp_path / "four")
    assert json.loads((tmp_path / "four" / "config.json").read_text())["model_args"] == {"in_chans": 4}
    back = zoo.create_model(name, pretrained=tmp_path / "four").eval()
    y = torch.randn(1, 4, 160, 160) if name == "resnet50" else torch.randn(1, 4, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(back(y), four(y))


def test_num_classes_zero_gives_pooled_features():
    x = torch.randn(2, 3, 224, 224)
    for name in ("resnet50", "squeezenet1_1"):
        model = zoo.create_model(name, num_classes=0).eval()
        with torch.no_grad():
            pooled = model(x)
            final, _ = model.forward_intermediates(x, indices=[0])
        assert model.num_classes == 0 and pooled.shape == (2, model.feature_info.channels()[-1])
        torch.testing.assert_close(pooled, final.mean((2, 3)))
        model.reset_classifier(10)  # a head again, of the architecture's own kind
        assert model(x).shape == (2, 10)
    vgg = zoo.create_model("vgg19", num_classes=0).eval()  # no pooling head: the pre-logits (fc7)
    assert vgg(torch.randn(1, 3, 224, 224)).shape == (1, 4096)


@pytest.mark.parametrize("name", POOLING_HEADS)
def test_global_pool_and_drop_rate(name, tmp_path):
    x = torch.randn(1, 3, 128, 128)  # adaptive pooling: any size, also for the fixed-window heads
    model = zoo.create_model(name, num_classes=0, global_pool="max").eval()
    with torch.no_grad():
        final, _ = model.forward_intermediates(x, indices=[0])
        torch.testing.assert_close(model(x), final.amax((2, 3)))
        model.reset_classifier(0, global_pool="avgmax")
        torch.testing.assert_close(model(x), 0.5 * (final.amax((2, 3)) + final.mean((2, 3))))
        model.reset_classifier(0, global_pool="")
        assert torch.equal(model(x), final)  # no pooling: the final feature map
        model.reset_classifier(5, global_pool="avg")
        assert model(x).shape == (1, 5)

    dropped = zoo.create_model(name, num_classes=3, drop_rate=0.5, global_pool="max")
    drops = {n: m.p for n, m in dropped.named_modules() if n.endswith("head_drop")}
    # inside the classifier: the hook that applies it gets only the classifier, and stays scriptable so
    assert drops == {dropped.classifier_name + ".head_drop": 0.5}
    for model in (dropped, copy.deepcopy(dropped), pickle.loads(pickle.dumps(dropped))):
        seen = []
        model.get_classifier().register_forward_hook(lambda m, a, out: seen.append(a[0]))
        model.train()(x)
        assert (seen[-1] == 0).float().mean() > 0.3  # half of the pooled features are dropped in training
        with torch.no_grad():  # and none in eval mode: the hook's Dropout is this model's own, eval too
            assert torch.equal(model.eval()(x), model(x)) and torch.equal(seen[-1], seen[-2])
    dropped.eval()
    with torch.no_grad():
        out = dropped(x)
    save_pretrained(dropped, tmp_path / "head")
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["model_args"] == {"drop_rate": 0.5, "global_pool": "max"} and config["num_classes"] == 3
    back = zoo.create_model(name, pretrained=tmp_path / "head").eval()
    assert back.pretrained_cfg["model_args"] == config["model_args"]
    with torch.no_grad():
        torch.testing.assert_close(back(x), out)


def test_features_only_round_trips_compiles_and_exports(tmp_path):
    torch.manual_seed(0)
    backbone = zoo.create_model("squeezenet1_1", features_only=True, out_indices=(1, 3), in_chans=2).eval()
    save_pretrained(backbone, tmp_path / "bb")
    config = json.loads((tmp_path / "bb" / "config.json").read_text())
    assert config["model_args"] == {"in_chans": 2, "features_only": True, "out_indices": [1, 3]}
    back = zoo.create_model("squeezenet1_1", pretrained=tmp_path / "bb").eval()
    assert back.feature_info.channels() == [128, 512] and back.feature_info.reduction() == [4, 16]
    x = torch.randn(1, 2, 160, 192)
    with torch.no_grad():
        expected = backbone(x)
        assert_outputs_match(back(x), expected, rtol=1.3e-6, atol=1e-5)
        assert_outputs_match(torch.compile(back, backend="eager")(x), expected, rtol=1.3e-6, atol=1e-5)
        exported = torch.export.export(back, (x,))
        assert_outputs_match(exported.module()(x), expected, rtol=1.3e-6, atol=1e-5)


def test_param_groups_decay_with_depth():
    model = zoo.create_model("resnet50", num_classes=10)
    groups = zoo.param_groups(model, 1e-3, weight_decay=0.05, layer_decay=0.5)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and lrs[-1] == 1e-3 and lrs[0] == 1e-3 * 0.5 ** 5  # stem+stage 0 .. 4, classifier
    head = [g for g in groups if any(n.startswith("pred.") for n in g["names"])]
    assert all(g["lr"] == 1e-3 and g["names"][0].startswith("pred.") for g in head)
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for g in groups:
        for name in g["names"]:
            exempt = name.endswith(".bias") or name.rpartition(".")[0] in norms
            assert g["weight_decay"] == (0.0 if exempt else 0.05), name
    flat = zoo.param_groups(model, 0.1, weight_decay=0.0)
    assert {g["lr"] for g in flat} == {0.1}
    with pytest.raises(ValueError, match=r"layer_decay must be a number in \(0, 1\] or None, got 1.5"):
        zoo.param_groups(model, 0.1, weight_decay=0.0, layer_decay=1.5)


def test_finetune_with_layer_decay_and_freeze_until(tmp_path):
    from zoo.tasks.finetune import build_parser, main, run

    args = build_parser().parse_args(["--model", "squeezenet1_1", "--dataset", "digits", "--pretrained", "none",
                                      "--epochs", "1", "--image-size", "32", "--batch-size", "256",
                                      "--layer-decay", "0.75", "--freeze-until", "1", "--out", str(tmp_path / "ft")])
    torch.manual_seed(0)
    before = zoo.create_model("squeezenet1_1", num_classes=10).state_dict()
    result = run(args)
    assert result["layer_decay"] == 0.75 and result["freeze_until"] == 1
    after = zoo.create_model("squeezenet1_1", pretrained=tmp_path / "ft").state_dict()
    frozen = [k for k in before if k.startswith(("conv1.", "fire2.", "fire3."))]  # stem, stages 0 and 1
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in before if k not in frozen)
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["finetune"]["layer_decay"] == 0.75 and config["finetune"]["freeze_until"] == 1
    assert main(["--model", "squeezenet1_1", "--dataset", "digits", "--pretrained", "none",
                 "--freeze-until", "7"]) == 2


def test_options_round_trip_through_the_hub(tmp_path, monkeypatch):
    import zoo.publish.hub
    from zoo.publish.localhub import LocalHub

    with LocalHub(tmp_path / "server") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setattr(zoo.publish.hub, "HubPublisher", lambda token=None: server.publisher())
        model = zoo.create_model("squeezenet1_1", in_chans=1, num_classes=3, drop_rate=0.1, global_pool="max").eval()
        revision = zoo.push_to_hub(model, "someone/grey-squeeze")
        back = zoo.create_model(f"hf-hub:someone/grey-squeeze@{revision}").eval()
        assert back.pretrained_cfg["model_args"] == {"in_chans": 1, "drop_rate": 0.1, "global_pool": "max"}
        x = torch.randn(1, 1, 160, 160)
        with torch.no_grad():
            torch.testing.assert_close(back(x), model(x))
        backbone = zoo.create_model(f"hf-hub:someone/grey-squeeze@{revision}", features_only=True, out_indices=(3,))
        with torch.no_grad():
            final, _ = model.forward_intermediates(x, indices=[0])
            torch.testing.assert_close(backbone(x)[0], final)
        revision = zoo.push_to_hub(backbone, "someone/grey-backbone")  # a features_only model itself
        again = zoo.create_model(f"hf-hub:someone/grey-backbone@{revision}")
        assert again.pretrained_cfg["model_args"] == {"in_chans": 1, "features_only": True, "out_indices": [3]}
        with torch.no_grad():
            torch.testing.assert_close(again(x)[0], final)


def test_head_options_compile_export_and_ddp():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from zoo.publish.localhub import free_port

    model = zoo.create_model("squeezenet1_1", num_classes=4, drop_rate=0.2, global_pool="avgmax", in_chans=1).eval()
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.compile(model, backend="eager")(x), expected)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        backbone = zoo.create_model("squeezenet1_1", features_only=True, out_indices=(2, 3))
        net = DistributedDataParallel(backbone)
        sum(f.mean() for f in net(torch.randn(2, 3, 128, 128))).backward()
        assert all(p.grad is not None for p in backbone.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["squeezenet1_1", "resnet50"])
def test_stages_survive_the_block_restructure(name, standins):
    """Generated sources whose repeated blocks are classes (issue 12: dotted layer names) give the same stages,
    features and parameter groups: everything is read from the traced graph, not from the module tree."""
    from zoo.modeling.backbone import features_model
    from zoo.convert import load
    from zoo.modeling.factory import ZooModel
    from zoo.registry import load_registry

    entry = load_registry().entry(name)
    structured = load(standins[entry.source.standin], outputs=[entry.logits], structure=True).eval()
    nested = type("Nested", (ZooModel, type(structured)), {})
    model = nested.__new__(nested)
    model.__dict__.update(structured.__dict__)
    flat = zoo.create_model(name)
    model.classifier_name, model.pretrained_cfg, model.num_classes = entry.classifier, flat.pretrained_cfg, 1000
    assert any("." in n.rpartition(".")[0] for n, _ in model.named_parameters())  # layers sit inside blocks
    assert [(d["num_chs"], d["reduction"]) for d in model.feature_info] == \
        [(d["num_chs"], d["reduction"]) for d in flat.feature_info]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = features_model(model)(x)
        hooked = _hooked(model, model.feature_info, x)
    for i, f in hooked.items():
        assert torch.equal(feats[i], f)
    groups = zoo.param_groups(model, 1.0, weight_decay=0.1, layer_decay=0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len({g["lr"] for g in groups}) == len(model.feature_info) + 1  # stages, then the classifier
