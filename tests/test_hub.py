"""Pretrained weights through the real huggingface_hub client against a loopback Hub (olah)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import hf_hub_download, snapshot_download
from safetensors.torch import load as load_bytes, load_file

import zoo
import zoo.publish.hub
from zoo.publish.build import Options, build
from zoo.publish.hub import save_pretrained
from zoo.publish.localhub import LocalHub, free_port
from zoo.weights.pretrained import WeightsError

from .conftest import HF_HOME
from .helpers import zoo_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("hub")
    pins = root / "published.json"
    with LocalHub(root / "server") as server:
        results = build(Options(out=root / "build", offline=True, models_dir=root / "models", push=True, jobs=2,
                                publisher=server.publisher(), pins=pins, names=["squeezenet1_1", "densenet121"],
                                namespace="zoo-models"))
        monkeypatch_module.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch_module.setenv("ZOO_PINS", str(pins))
        yield {"server": server, "pins": pins, "build": root / "build", "root": root, "results": results}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_pretrained_true_downloads_the_pinned_revision(hub):
    model = zoo.densenet121(pretrained=True)
    pin = json.loads(hub["pins"].read_text())["densenet121"]
    assert model.pretrained_cfg["weights"] == f"hf://zoo-models/densenet121@{pin['revision']}"
    assert model.pretrained_cfg["standin"] is True
    _assert_published_weights(model, hub["build"] / "densenet121")


def _assert_published_weights(model, folder: Path):
    """The model holds exactly the tensors of the model.safetensors the build published from ``folder``."""
    got, want = model.state_dict(), load_file(str(folder / "model.safetensors"))
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_real_client_revision_pins_and_snapshot(hub):
    pin = json.loads(hub["pins"].read_text())["squeezenet1_1"]
    endpoint = hub["server"].endpoint
    path = hf_hub_download(pin["repo"], "config.json", revision=pin["revision"], endpoint=endpoint,
                           cache_dir=hub["root"] / "client-cache")
    assert json.loads(Path(path).read_text())["name"] == "squeezenet1_1"
    folder = snapshot_download(pin["repo"], revision=pin["revision"], endpoint=endpoint,
                               cache_dir=hub["root"] / "client-cache")
    assert sorted(p.name for p in Path(folder).iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert pin["revision"] in folder


def test_fine_tuning_head_on_a_pretrained_backbone(hub):
    model = zoo.create_model("squeezenet1_1", pretrained=True, num_classes=7)
    reference = zoo.squeezenet1_1(pretrained=True)
    assert torch.equal(model.fire9.expand3x3.weight, reference.fire9.expand3x3.weight)
    head = model.get_classifier()
    assert isinstance(head, torch.nn.Conv2d) and head.out_channels == 7 and head.kernel_size == (1, 1)
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 7)
    assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 512, 13, 13)
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3) and model.pretrained_cfg["num_classes"] == 3


def test_hash_mismatch_is_refused_and_the_cached_file_removed(hub, tmp_path, monkeypatch):
    pins = json.loads(hub["pins"].read_text())
    pins["squeezenet1_1"]["sha256"] = "0" * 64
    bad = tmp_path / "pins.json"
    bad.write_text(json.dumps(pins))
    monkeypatch.setenv("ZOO_PINS", str(bad))
    with pytest.raises(WeightsError, match="sha256 of zoo-models/squeezenet1_1.* the pin says 0000"):
        zoo.squeezenet1_1(pretrained=True)
    monkeypatch.setenv("ZOO_PINS", str(hub["pins"]))
    fetched = zoo.squeezenet1_1(pretrained=True)  # fetched again, correct this time
    assert fetched.pretrained_cfg["weights"] == f"hf://zoo-models/squeezenet1_1@{pins['squeezenet1_1']['revision']}"
    _assert_published_weights(fetched, hub["build"] / "squeezenet1_1")


def test_missing_repo_falls_back_to_the_onnx_file(hub, tmp_path, monkeypatch):
    pins = json.loads(hub["pins"].read_text())
    pins["squeezenet1_1"]["repo"] = "zoo-models/does-not-exist"
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(pins))
    monkeypatch.setenv("ZOO_PINS", str(path))
    monkeypatch.setenv("ZOO_OFFLINE", "1")  # the fallback may not leave the machine: it must say so
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match=r"(?s)zoo-models/does-not-exist.* not found at http://127.0.0.1.*"
                                           r"pinned ONNX file: .*offline .*squeezenet1.0-9.onnx"):
        zoo.squeezenet1_1(pretrained=True)


def test_unpinned_model_offline_without_cache_names_the_file_to_fetch(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match=r"resnet50: nothing cached, and could not fetch resnet50-caffe2-v1-9.onnx "
                                           r"\(sha256 822daa93[0-9a-f]{56}\):\n  https://huggingface.co/onnxmodelzoo/"
                                           r".*: offline"):
        zoo.resnet50(pretrained=True)


def _run_offline(hub, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
           "ZOO_PINS": str(hub["pins"]), "HF_ENDPOINT": "http://127.0.0.1:9"}
    code = "import zoo; m = zoo.squeezenet1_1(pretrained=True); print('loaded', m.pretrained_cfg['weights'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_offline_uses_the_cache_and_fails_clearly_without_it(hub, tmp_path):
    empty = _run_offline(hub, tmp_path / "empty-home")
    assert empty.returncode != 0 and "not in the local Hub cache" in empty.stderr
    zoo.squeezenet1_1(pretrained=True)  # fills the session's cache (conftest.HF_HOME)
    warm = _run_offline(hub, HF_HOME)
    assert warm.returncode == 0 and "loaded hf://zoo-models/squeezenet1_1@" in warm.stdout, warm.stderr


def test_torch_hub_load_from_the_local_checkout(hub):
    model = torch.hub.load(str(ROOT), "densenet121", source="local", pretrained=True)
    assert isinstance(model, zoo.ZooModel) and model.pretrained_cfg["name"] == "densenet121"
    assert model.pretrained_cfg["standin"] is True


def test_cli_predict(hub, tmp_path):
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.new("RGB", (300, 240), (200, 120, 40)).save(image)
    done = zoo_cli("predict", "squeezenet1_1", image, "--top", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "stand-ins" in lines[0] and lines[1] == f"{image} (stand-in weights)" and len(lines) == 5
    assert all("%" in line for line in lines[2:])


def test_concurrent_pretrained_loads_share_the_cache(hub, tmp_path):
    home = tmp_path / "shared-home"
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub")}
    code = ("import hashlib, zoo; m = zoo.densenet121(pretrained=True); "
            "print(hashlib.sha256(m.fc6.weight.detach().numpy().tobytes()).hexdigest())")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    blobs = [p for p in (home / "hub").rglob("*") if p.is_file() and "blobs" in p.parts]
    assert not [p for p in blobs if p.name.endswith(".incomplete")]


def test_push_to_hub_and_create_model_from_it(hub, monkeypatch, tmp_path):
    """A fine-tuned head round-trips through the real huggingface_hub client (upload via the loopback seam)."""
    import zoo.publish.hub

    model = zoo.create_model("squeezenet1_1", pretrained=True, num_classes=3)
    model.pretrained_cfg["labels"] = ["cat", "dog", "cow"]
    monkeypatch.setattr(zoo.publish.hub, "HubPublisher", lambda token=None: hub["server"].publisher())
    revision = zoo.push_to_hub(model, "someone/squeeze-3")
    back = zoo.create_model(f"hf-hub:someone/squeeze-3@{revision}").eval()
    assert back.num_classes == 3 and zoo.labels(back) == ["cat", "dog", "cow"]
    assert back.pretrained_cfg["standin"] is True and back.pretrained_cfg["weights"] == f"hf-hub:someone/squeeze-3@{revision}"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(back(x), model.eval()(x))
    latest = zoo.create_model("hf-hub:someone/squeeze-3")
    assert torch.equal(latest.conv10.weight, back.conv10.weight)


def test_hub_repository_naming_an_unknown_architecture_is_refused(hub, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    zoo.publish.hub.save_pretrained(zoo.squeezenet1_1(), folder, extra={"architecture": "os.system"})
    (folder / "README.md").write_text("evil\n")
    hub["server"].publisher().publish(folder, "someone/evil", "unknown architecture")
    with pytest.raises(WeightsError, match=r"architecture 'os.system', which is not a model of this zoo's registry"):
        zoo.create_model("hf-hub:someone/evil")


# --- publishing through huggingface_hub.HfApi itself, to a writable loopback Hub ---------------------------

@pytest.fixture(scope="module")
def writable(tmp_path_factory):
    """squeezenet1_1 built once from its stand-in, and a writable loopback Hub for `build.py --push`."""
    from .servers import WritableHub

    root = tmp_path_factory.mktemp("push")
    build(Options(out=root / "out", offline=True, models_dir=root / "models", names=["squeezenet1_1"]))
    with WritableHub() as server:
        yield server, root


def _push(server, root: Path, pins: Path, capsys) -> tuple[int, str]:
    """`scripts/build.py squeezenet1_1 --offline --push` (the build itself is unchanged, so only the push runs)."""
    from zoo.publish.build import main

    code = main(["squeezenet1_1", "--offline", "--push", "--namespace", "zoo-test", "--endpoint", server.url,
                 "--out", str(root / "out"), "--models-dir", str(root / "models"), "--pins", str(pins)])
    return code, capsys.readouterr().err


def test_push_pins_the_revision_only_after_downloading_it_back(writable, tmp_path, capsys):
    server, root = writable
    pins = tmp_path / "published.json"
    pins.write_text('{"other": {"repo": "x/other"}}\n')
    seen = []  # published.json as it was when the upload was read back
    server.on_request = lambda method, path: seen.append(pins.read_text()) if "/resolve/" in path else None
    try:
        code, err = _push(server, root, pins, capsys)
    finally:
        server.on_request = lambda method, path: None
    assert code == 0, err
    pin = json.loads(pins.read_text())["squeezenet1_1"]
    built = json.loads((root / "out" / "squeezenet1_1" / "build.json").read_text())
    assert pin == {"namespace": "zoo-test", "repo": "zoo-test/squeezenet1_1", "revision": server.head(pin["repo"]),
                   "sha256": built["weights_sha256"], "standin": True}
    assert json.loads(pins.read_text())["other"] == {"repo": "x/other"}
    assert seen and set(seen) == {'{"other": {"repo": "x/other"}}\n'}  # not pinned while being verified
    files = server.repos[pin["repo"]]["commits"][pin["revision"]]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert hashlib.sha256(files["model.safetensors"]).hexdigest() == pin["sha256"]
    commits = [p for m, p in server.requests if m == "POST" and "/commit/" in p]
    assert len(commits) == 1  # the three files arrive in one commit


@pytest.mark.parametrize("fault", ["500 on the commit", "connection dropped", "corrupted download"])
def test_a_failed_or_unfaithful_upload_leaves_published_json_unchanged(writable, fault, tmp_path, capsys):
    server, root = writable
    pins = tmp_path / "published.json"
    before = '{"squeezenet1_1": {"repo": "zoo-test/squeezenet1_1", "revision": "' + "a" * 40 + '"}}\n'
    pins.write_text(before)
    head = server.head("zoo-test/squeezenet1_1")
    if fault == "500 on the commit":
        server.fail_commits = 99  # huggingface_hub does not retry a commit; the rest are never asked for
    elif fault == "connection dropped":
        server.drop_commits = 99
    else:
        server.corrupt.add("model.safetensors")
    try:
        code, err = _push(server, root, pins, capsys)
    finally:
        server.fail_commits = server.drop_commits = 0
        server.corrupt.clear()
    assert code == 1 and pins.read_text() == before
    assert f"{pins} not changed" in err, err
    if fault == "corrupted download":
        assert server.head("zoo-test/squeezenet1_1") != head  # the commit landed; the pin refuses it
        assert re.search(r"squeezenet1_1: uploaded, but not as built: zoo-test/squeezenet1_1@[0-9a-f]{40} on "
                         r"http://127.0.0.1:\d+: model.safetensors downloaded back has sha256 [0-9a-f]{64}, the build "
                         r"wrote [0-9a-f]{64}", err), err
    else:
        assert server.head("zoo-test/squeezenet1_1") == head
        reason = r"HfHubHTTPError: Server error '500 Internal Server Error'" if fault == "500 on the commit" else r"RemoteProtocolError"
        assert re.search(rf"squeezenet1_1: upload to zoo-test/squeezenet1_1 on http://127.0.0.1:\d+ failed "
                         rf"\({reason}", err), err


def test_push_to_hub_reads_the_weights_back(writable, monkeypatch):
    server, _ = writable
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    model = zoo.create_model("squeezenet1_1", pretrained=False, num_classes=3)
    revision = zoo.push_to_hub(model, "someone/verified")
    assert server.repos["someone/verified"]["commits"][revision]["model.safetensors"]
    server.corrupt.add("model.safetensors")
    try:
        with pytest.raises(zoo.publish.hub.PublishError, match=r"someone/verified@[0-9a-f]{40} .*downloaded back has sha256"):
            zoo.push_to_hub(model, "someone/verified")
    finally:
        server.corrupt.clear()


def test_push_to_hub_without_network_or_with_stand_ins_is_one_error(monkeypatch):
    """No network: the package's own error naming repository and endpoint (was a raw httpx ConnectError).
    Stand-in weights: refused off loopback, as `scripts/build.py --push` refuses them."""
    import socket

    model = zoo.create_model("squeezenet1_1", pretrained=False, num_classes=3)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(zoo.publish.hub.PublishError, match=r"^someone/flowers on http://127.0.0.1:\d+: upload failed"):
        zoo.push_to_hub(model, "someone/flowers")
    model.pretrained_cfg["standin"] = True  # e.g. fine-tuned from the demo's stand-in weights
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org")
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("a stand-in upload was attempted"))
    with pytest.raises(zoo.publish.hub.PublishError, match=r"hub.example.org: refusing to push stand-in weights"):
        zoo.push_to_hub(model, "someone/flowers")


def test_zoo_finetune_freeze_backbone_keeps_batchnorm_and_pushes(writable, monkeypatch, tmp_path):
    """`zoo finetune --freeze-backbone --push-to-hub`: only the new head changes (the frozen batch norms keep
    their running statistics), and the pushed revision holds exactly what was saved."""
    from zoo.cli import main as zoo_main

    server, _ = writable
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    torch.manual_seed(0)
    start = zoo.create_model("densenet121", pretrained=False)
    with torch.no_grad():  # statistics that a batch-norm in train mode would visibly move
        for m in start.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_pretrained(start, tmp_path / "start")
    assert zoo_main(["finetune", "--model", "densenet121", "--dataset", "digits", "--pretrained", str(tmp_path / "start"),
                     "--freeze-backbone", "--epochs", "1", "--image-size", "32", "--device", "cpu",
                     "--out", str(tmp_path / "ft"), "--push-to-hub", "someone/frozen"]) == 0
    before, after = load_file(str(tmp_path / "start" / "model.safetensors")), load_file(str(tmp_path / "ft" / "model.safetensors"))
    head = start.classifier_name + "."
    backbone = [k for k in before if not k.startswith(head)]
    assert any(k.endswith("running_mean") for k in backbone)
    assert [k for k in backbone if not torch.equal(before[k], after[k])] == []
    assert after[head + "weight"].shape[0] == 10
    commits = server.repos["someone/frozen"]["commits"]
    assert len(commits) == 1
    pushed = load_bytes(next(iter(commits.values()))["model.safetensors"])
    assert sorted(pushed) == sorted(after) and all(torch.equal(pushed[k], after[k]) for k in after)
