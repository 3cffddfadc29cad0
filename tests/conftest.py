from __future__ import annotations

import os
import tempfile
from pathlib import Path

# pytest-xdist's workers share the cores: each (and each process it starts) gets its share of intra-op threads,
# or two workers' thread pools fight over the same cores (DenseNet fine-tuning ran 3.8x slower that way).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

# huggingface_hub reads these when it is imported: give the test session its own cache, never the user's.
HF_HOME = Path(tempfile.mkdtemp(prefix="zoo-tests-hf-"))
os.environ["HF_HOME"] = str(HF_HOME)
os.environ["HF_HUB_CACHE"] = str(HF_HOME / "hub")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import atexit  # noqa: E402
import ipaddress  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402

import pytest  # noqa: E402

_connect = socket.socket.connect


def _loopback_only(sock, address):
    """Tests never reach past this machine: only loopback addresses (and local sockets) may be dialled."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            allowed = ipaddress.ip_address(host).is_loopback
        except ValueError:
            allowed = host == "localhost"
        if not allowed:
            raise ConnectionRefusedError(f"tests may only connect to loopback addresses, not {host}")
    return _connect(sock, address)


socket.socket.connect = _loopback_only


atexit.register(shutil.rmtree, HF_HOME, ignore_errors=True)

import torch  # noqa: E402

if _WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case a plugin imported torch before this file

from zoo.registry import load_registry  # noqa: E402
from zoo.publish.standins import build_standin  # noqa: E402

from .helpers import export, randomize_  # noqa: E402,F401 - tests import them from here too

# The files that take longest run first, the offline build's own file before the others that read the build
# (their worker builds it while the other worker exports); pyproject.toml turns xdist's reordering off.
FIRST = ("test_build.py", "test_export.py", "test_readme.py", "test_zoo_api.py", "test_zoo_graphs.py",
         "test_journeys.py", "test_backbone.py", "test_quantized.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: each file keeps its own order


# Every registry entry: its name, and (light graph, logits tensor) of its ONNX file, cut before any final Softmax.
ZOO_MODELS = list(load_registry())
ZOO_GRAPHS = {e.source.standin: e.logits for e in load_registry().values() if e.source.standin}
# The AlexNet/ZFNet/VGG files hold 240-570 MB of weights: build, convert and load them once per run.
BIG_MODELS = ("alexnet", "zfnet512", "vgg19")


class _Lazy(dict):
    """A dict that makes each value on first use (a stand-in of VGG-19 takes seconds and 575 MB)."""

    def __init__(self, make):
        super().__init__()
        self._make = make

    def __missing__(self, key):
        self[key] = value = self._make(key)
        return value


def shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder of this run that every xdist worker sees (beside the workers' own base folders)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return root / name


def made_once(tmp_path_factory, name: str, make):
    """``make(folder)``'s result, computed by the first worker that asks and read back by the others: the folder
    is filled under a lock, and the result is pickled beside it."""
    import pickle

    from filelock import FileLock

    folder = shared_folder(tmp_path_factory, name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    result = folder.parent / f"{name}.result.pickle"
    with FileLock(str(folder.parent / f"{name}.lock")):
        if not result.exists():
            folder.mkdir(exist_ok=True)  # a worker that failed here leaves a partial folder to overwrite
            value = make(folder)
            result.write_bytes(pickle.dumps(value))
            return value
    return pickle.loads(result.read_bytes())


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> dict[str, Path]:
    return _Lazy(lambda name: made_once(tmp_path_factory, f"standin-{name}",
                                        lambda folder: build_standin(name, folder / f"{name}.onnx", seed=0)))


@pytest.fixture(scope="session")
def offline_build(tmp_path_factory):
    """(Options, results) of one offline build of every registry entry, shared by the whole run. Tests read it;
    one that rebuilds works on a copy."""
    from zoo.publish.build import Options, build

    def make(root):
        opts = Options(out=root / "out", offline=True, models_dir=root / "models", jobs=2)
        return opts, build(opts)
    return made_once(tmp_path_factory, "build", make)


@pytest.fixture(scope="session")
def built_modules(offline_build):
    """Each registry entry's module as the offline build generated it, its stand-in weights loaded."""
    import json

    from zoo.convert.api import instantiate

    opts, _ = offline_build

    def make(name):
        config = json.loads((opts.out / name / "config.json").read_text())
        module = instantiate(opts.models_dir / f"{name}.py", config["class_name"], opts.out / name / "model.safetensors")
        return module.eval()
    return _Lazy(make)


@pytest.fixture(scope="session")
def cut_standins(standins, tmp_path_factory):
    """Each registry entry's stand-in cut at its logits and flattened to (N, classes), as the build does."""
    from zoo.weights.conversion import prepare_graph

    registry = load_registry()

    def make(name):
        entry = registry[name]
        return made_once(tmp_path_factory, f"cut-{name}",
                         lambda folder: prepare_graph(standins[entry.source.standin], entry.logits, folder / f"{name}.onnx"))
    return _Lazy(make)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    """A seeded 6-class SqueezeNet at 32 px with labels a-f, saved as a fine-tuned folder (config.json)."""
    from .helpers import finetuned_folder

    return finetuned_folder(tmp_path_factory.mktemp("tuned"))
