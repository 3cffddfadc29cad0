"""pretrained=True without published weights: the pinned ONNX file is fetched (loopback HTTP only),
converted into the committed module's weights, cached, and checked on every later load."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

import zoo
from zoo.weights.conversion import prepare_graph
from zoo.weights.download import file_sha256
from zoo.registry import DEFAULT_REGISTRY, load_registry
from zoo.weights.pretrained import WeightsError

from .helpers import KillRunner, changes_counted, changes_listed, kill_points
from .servers import FileServer

ROOT = Path(__file__).resolve().parents[1]
FIRST_FOUR = ("squeezenet1_1", "densenet121", "resnet50", "googlenet")
STANDIN_OF = {name: load_registry().entry(name).source.standin for name in FIRST_FOUR}


def write_registry(folder: Path, standins: dict[str, Path], urls, edit=lambda name, source: None) -> Path:
    """A copy of the packaged registry pinning the stand-ins' real bytes, with the committed sources beside it."""
    data = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    data["models"] = {name: data["models"][name] for name in STANDIN_OF}
    for name, body in data["models"].items():
        path = standins[STANDIN_OF[name]]
        body["source"].update(sha256=file_sha256(path), size=path.stat().st_size, urls=urls(body["source"]["file"]))
        edit(name, body["source"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "registry.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copytree(ROOT / "zoo" / "models", folder / "models", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("published.json", "__pycache__"))
    return folder / "registry.yaml"


def use_registry(monkeypatch, registry: Path, tmp_path: Path) -> dict[str, str]:
    """This registry, an empty cache and no pinned Hub revisions, for the rest of the test."""
    env = {"ZOO_REGISTRY": str(registry), "ZOO_CACHE": str(tmp_path / "cache"), "ZOO_PINS": str(tmp_path / "none.json")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ZOO_ONNX_MIRROR", raising=False)
    return env


@pytest.fixture(scope="module")
def server(standins):
    files = {f"/{e.source.file}": standins[STANDIN_OF[e.name]].read_bytes()
             for e in load_registry().values() if e.name in STANDIN_OF}
    with FileServer(files) as srv:
        yield srv


@pytest.fixture
def zoo_env(server, standins, tmp_path, monkeypatch):
    """ZOO_REGISTRY pointing at the loopback server, an empty ZOO_CACHE and no pinned Hub revisions."""
    registry = write_registry(tmp_path / "zoo", standins, lambda f: [f"{server.url}/{f}"])
    env = use_registry(monkeypatch, registry, tmp_path)
    server.requests.clear()
    return {**env, "registry": registry, "root": tmp_path}


def _onnxruntime_logits(standin: Path, logits: str, x: np.ndarray, tmp: Path) -> np.ndarray:
    prepared = prepare_graph(standin, logits, tmp / "prepared.onnx")
    session = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _subprocess(env: dict, code: str) -> subprocess.CompletedProcess:
    full = {**os.environ, **{k: v for k, v in env.items() if k.isupper()}}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", sorted(STANDIN_OF))
def test_first_load_converts_caches_and_matches_onnxruntime(name, zoo_env, server, standins, tmp_path):
    model = zoo.create_model(name, pretrained=True).eval()
    entry = load_registry().entry(name)
    assert model.pretrained_cfg["weights"] == f"onnx://{entry.source.file}@sha256:{entry.source.sha256}"
    assert server.requests == [(f"/{entry.source.file}", None)]
    x = np.random.default_rng(0).normal(size=(1, *entry.input_size)).astype(np.float32)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    reference = _onnxruntime_logits(standins[STANDIN_OF[name]], entry.logits, x, tmp_path)
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()
    cached = list((Path(zoo_env["ZOO_CACHE"]) / name / entry.source.sha256).glob("*/model.safetensors"))
    assert len(cached) == 1 and (cached[0].parent / "model.safetensors.sha256").read_text().strip() == \
        file_sha256(cached[0])


def test_second_load_in_a_fresh_process_touches_neither_network_nor_onnx(zoo_env, server):
    first = zoo.squeezenet1_1(pretrained=True)
    assert len(server.requests) == 1
    source_cache = Path(zoo_env["ZOO_CACHE"]) / "sources"
    shutil.rmtree(source_cache)  # the ONNX file is gone too: only the converted weights may be read
    done = _subprocess(zoo_env, "import zoo, hashlib; m = zoo.squeezenet1_1(pretrained=True); "
                                "print(hashlib.sha256(m.conv10.weight.detach().numpy().tobytes()).hexdigest())")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hashlib.sha256(first.conv10.weight.detach().numpy().tobytes()).hexdigest()
    assert len(server.requests) == 1 and not source_cache.exists()


def test_altered_cache_is_detected_and_rebuilt(zoo_env, caplog):
    zoo.squeezenet1_1(pretrained=True)
    (cached,) = Path(zoo_env["ZOO_CACHE"]).glob("squeezenet1_1/*/*/model.safetensors")
    reference = zoo.squeezenet1_1(pretrained=True).conv1.weight.detach().clone()
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="zoo"):
        again = zoo.squeezenet1_1(pretrained=True)
    assert "do not match their recorded sha256; rebuilding" in caplog.text
    assert torch.equal(again.conv1.weight, reference)
    assert file_sha256(cached) == (cached.parent / "model.safetensors.sha256").read_text().strip()


def test_wrong_hash_names_url_expected_and_actual(server, standins, tmp_path, monkeypatch):
    registry = write_registry(tmp_path / "zoo", standins, lambda f: [f"{server.url}/{f}"],
                              edit=lambda name, source: source.update(sha256="0" * 64))
    use_registry(monkeypatch, registry, tmp_path)
    with pytest.raises(WeightsError) as err:
        zoo.squeezenet1_1(pretrained=True)
    text = str(err.value)
    assert f"{server.url}/squeezenet1.0-9.onnx" in text and "expected " + "0" * 64 in text
    assert file_sha256(standins["squeezenet"]) in text
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".lock"]  # nothing half-written


def test_truncated_file_server_down_and_a_good_mirror(server, standins, tmp_path, monkeypatch):
    dead = "http://127.0.0.1:9"
    registry = write_registry(tmp_path / "zoo", standins, lambda f: [f"{dead}/{f}", f"{server.url}/missing/{f}"])
    use_registry(monkeypatch, registry, tmp_path)
    with pytest.raises(WeightsError, match=r"(?s)127.0.0.1:9/squeezenet1.0-9.onnx: .*missing/squeezenet1.0-9.onnx: "
                                           r".*404"):
        zoo.squeezenet1_1(pretrained=True)
    full = server.files["/squeezenet1.0-9.onnx"]
    server.files["/short/squeezenet1.0-9.onnx"] = full[: len(full) // 2]
    monkeypatch.setenv("ZOO_ONNX_MIRROR", f"{server.url}/short")
    with pytest.raises(WeightsError, match=rf"short/squeezenet1.0-9.onnx: .*connection closed after {len(full) // 2:,} "
                                           rf"of {len(full):,} bytes"):
        zoo.squeezenet1_1(pretrained=True)
    monkeypatch.setenv("ZOO_ONNX_MIRROR", server.url)  # 404s and the dead server come after a good mirror
    model = zoo.squeezenet1_1(pretrained=True)
    assert model.pretrained_cfg["weights"].startswith("onnx://")


def test_offline_with_and_without_cache(zoo_env, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"(?s)squeezenet1_1: nothing cached, and could not fetch "
                                           r"squeezenet1.0-9.onnx.*offline \(HF_HUB_OFFLINE or ZOO_OFFLINE\).*set ZOO_ONNX_MIRROR"):
        zoo.squeezenet1_1(pretrained=True)
    monkeypatch.delenv("ZOO_OFFLINE")
    zoo.squeezenet1_1(pretrained=True)
    done = _subprocess({**zoo_env, "HF_HUB_OFFLINE": "1"}, "import zoo; zoo.squeezenet1_1(pretrained=True); print('ok')")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_offline_reads_a_local_mirror_and_names_it_when_it_lacks_the_file(zoo_env, server, standins, monkeypatch):
    mirror = zoo_env["root"] / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.setenv("ZOO_ONNX_MIRROR", str(mirror))
    with pytest.raises(WeightsError) as error:
        zoo.squeezenet1_1(pretrained=True)
    message = str(error.value)  # the advice does not go in a circle: the mirror is set, and lacks this file
    assert f"{mirror}/squeezenet1.0-9.onnx: no such file" in message, message
    assert f"put squeezenet1.0-9.onnx in the mirror ZOO_ONNX_MIRROR={mirror}" in message, message
    shutil.copyfile(standins[STANDIN_OF["squeezenet1_1"]], mirror / "squeezenet1.0-9.onnx")
    model = zoo.squeezenet1_1(pretrained=True)  # offline, and read from the local mirror
    assert model.pretrained_cfg["weights"].startswith("onnx://") and not server.requests


def test_no_network_fails_at_once_with_the_offline_message(zoo_env, monkeypatch):
    """A host that does not resolve is not retried (huggingface_hub and HTTP retries took ~29 s), and the error
    reads like the offline one: each URL once, the whole sha256, and the mirror to use instead."""
    import socket
    import time

    registry = yaml.safe_load(zoo_env["registry"].read_text())
    registry["models"]["squeezenet1_1"]["source"]["urls"] = [
        "https://huggingface.co/onnxmodelzoo/squeezenet1.0-9/resolve/main/squeezenet1.0-9.onnx",
        "https://github.com/onnx/models/raw/main/squeezenet1.0-9.onnx"]
    zoo_env["registry"].write_text(yaml.safe_dump(registry, sort_keys=False))
    asked = []

    def no_dns(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    slept = []
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(time, "sleep", slept.append)  # a retry's backoff would show here, whatever the clock
    with pytest.raises(WeightsError) as error:
        zoo.squeezenet1_1(pretrained=True)
    message = str(error.value)
    assert asked == ["huggingface.co", "github.com"] and slept == [], (asked, slept)
    sha256 = registry["models"]["squeezenet1_1"]["source"]["sha256"]
    assert message.startswith(f"squeezenet1_1: nothing cached, and could not fetch squeezenet1.0-9.onnx "
                              f"(sha256 {sha256}):"), message
    for url in registry["models"]["squeezenet1_1"]["source"]["urls"]:
        assert message.count(url) == 1, message
    assert "cannot resolve github.com (no network?)" in message and "set ZOO_ONNX_MIRROR" in message


def test_concurrent_first_loads_download_once(zoo_env, server):
    code = ("import zoo, hashlib; m = zoo.densenet121(pretrained=True); "
            "print(hashlib.sha256(m.fc6.weight.detach().numpy().tobytes()).hexdigest())")
    env = {**os.environ, **{k: v for k, v in zoo_env.items() if k.isupper()}}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-800:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    assert len([r for r in server.requests if r[0] == "/densenet-9.onnx"]) == 1


def test_committed_source_and_upstream_graph_disagree(server, standins, tmp_path, monkeypatch):
    registry = write_registry(tmp_path / "zoo", standins, lambda f: [f"{server.url}/{f}"])
    source = tmp_path / "zoo" / "models" / "squeezenet1_1.py"
    source.write_text(source.read_text().replace("nn.Conv2d(512, 1000, kernel_size=1)",
                                                 "nn.Conv2d(512, 1000, kernel_size=3)"))
    use_registry(monkeypatch, registry, tmp_path)
    with pytest.raises(WeightsError, match=r"squeezenet1_1: the committed source and the upstream graph "
                                           r"squeezenet1.0-9.onnx disagree, first at '.*conv10.weight'"):
        zoo.squeezenet1_1(pretrained=True)


# --- kill -9 during a first load ------------------------------------------------------------------------

LOAD_JOB = """
import zoo
zoo.squeezenet1_1(pretrained=True)
"""


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode() + value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cache_state(cache: Path, entry) -> str:
    """Where a killed load stopped, judged from the cache; a half-written file under a final name fails."""
    source = cache / "sources" / entry.source.sha256 / entry.source.file
    if source.exists():
        assert file_sha256(source) == entry.source.sha256, "a half-written ONNX file under its final name"
    parent = cache / entry.name / entry.source.sha256
    folders = [p for p in parent.glob("*") if not p.name.startswith(".")]
    if folders:
        (folder,) = folders
        assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "model.safetensors.sha256"], \
            sorted(p.name for p in folder.iterdir())
        assert file_sha256(folder / "model.safetensors") == (folder / "model.safetensors.sha256").read_text().strip(), \
            "half-written weights beside a checksum"
        return "whole"
    if any(parent.glob(".rebuild-*")):
        return "converting"
    if source.exists():
        return "fetched"
    return "downloading" if any(source.parent.glob("*.partial")) else "nothing"


@pytest.mark.parametrize("sweep", ["sampled", pytest.param("every", marks=pytest.mark.slow)])
def test_a_first_load_killed_with_sigkill_leaves_the_cache_absent_or_whole(server, standins, tmp_path, monkeypatch,
                                                                         sweep):
    """SIGKILL a first pretrained=True load (fetch, convert, cache) in a child process before a change to the cache
    (each change in turn in the slow tier; the first, the last, both sides of each rename and a seeded few
    otherwise). After each kill the cache holds the weights whole or not at all, and a load from a copy of that
    cache succeeds with the same weights as an unkilled load and leaves no temporary files behind."""
    registry = write_registry(tmp_path / "zoo", standins, lambda f: [f"{server.url}/{f}"])
    env = use_registry(monkeypatch, registry, tmp_path)
    entry = load_registry().entry("squeezenet1_1")
    reference = _weights_digest(zoo.squeezenet1_1(pretrained=True))  # an unkilled load, in its own cache
    cache = tmp_path / "killed-cache"
    with KillRunner(LOAD_JOB, [cache], scratch="/.rebuild-", env={**env, "ZOO_CACHE": str(cache)}) as runner:
        clean = runner.run(0)
        assert clean.returncode == 0, clean.stderr[-2000:]
        assert _cache_state(cache, entry) == "whole"
        changes = changes_listed(clean.stderr)
        assert len(changes) == changes_counted(clean.stderr) > 5
        points = range(1, len(changes) + 1) if sweep == "every" else kill_points(changes)
        states = []
        for kill_at in points:
            shutil.rmtree(cache, ignore_errors=True)  # each kill point starts from an empty cache
            child = runner.run(kill_at)
            assert child.returncode == -9, (kill_at, child.stderr[-2000:])
            state = _cache_state(cache, entry)
            states.append(state)
            # The next load, from a copy of exactly what the kill left: it must work and give the same weights.
            copy = tmp_path / f"after-kill-{kill_at}"
            if cache.exists():
                shutil.copytree(cache, copy, symlinks=True)
            monkeypatch.setenv("ZOO_CACHE", str(copy))
            assert _weights_digest(zoo.squeezenet1_1(pretrained=True)) == reference, f"after kill {kill_at} ({state})"
            assert _cache_state(copy, entry) == "whole"
            debris = [p.relative_to(copy) for p in copy.rglob("*") if p.name.startswith(".") and p.suffix != ".lock"
                      or p.name.endswith((".tmp", ".partial"))]
            assert not debris, f"the load after kill {kill_at} ({state}) left {debris}"
            shutil.rmtree(copy)
    print(f"{sweep}: killed at {list(points)} of {len(changes)} changes: {states}")
    # Every stage was reached: nothing written yet, a download in flight, the ONNX file fetched, a conversion in
    # flight, and the installed weights.
    assert {"nothing", "downloading", "fetched", "converting", "whole"} <= set(states), states
