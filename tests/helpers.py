"""Tiny ONNX graphs built in tests, torchvision exports, and the one way tests compare outputs."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

from zoo.convert import load, reference, verify

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name: str):
    """A file of scripts/ as a module, loaded once per run (scripts/ is not a package)."""
    module_name = f"_script_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
        module = sys.modules[module_name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def make_model(nodes, inputs, outputs, initializers=(), opset=17, path: Path | None = None, **graph_kw):
    graph = helper.make_graph(nodes, graph_kw.pop("name", "g"), inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **graph_kw)
    model.ir_version = min(model.ir_version, 10)
    if path is not None:
        onnx.save(model, str(path))
    return model


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def small_convnet(path: Path, opset: int = 13) -> Path:
    """conv -> relu -> global pool -> flatten -> gemm, with a dynamic batch axis."""
    rng = np.random.default_rng(0)
    inits = {
        "conv.weight": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(0, 0.1, (4,)).astype(np.float32),
        "fc.weight": rng.normal(0, 0.3, (5, 4)).astype(np.float32),
        "fc.bias": rng.normal(0, 0.1, (5,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["f"], name="/Flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="/fc/Gemm", transB=1),
    ]
    make_model(nodes, [tensor("x", ["batch", 3, 8, 8])], [tensor("y", ["batch", 5])], inits, opset=opset, path=path)
    return path


def in_process(main, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command-line entry point's ``main(argv)`` run in this process, as a subprocess would report it: the exit
    code (SystemExit included), stdout and stderr as text; ``env`` holds for the call only. A subprocess pays a
    start of Python and torch per call; test_cli.py keeps one real process per entry point."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse and sys.exit("message"), as the interpreter would end them
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(argv, code or 0, out.getvalue(), err.getvalue())


def zoo_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``zoo ARGS`` in this process (in_process)."""
    from zoo.cli import main

    return in_process(main, *args, env=env)


def run_onnxruntime(path, feeds: dict) -> list[np.ndarray]:
    """Every graph output of the ONNX file (a path or serialized bytes), as onnxruntime computes it on CPU."""
    return reference.session(path).run(None, feeds)


def assert_outputs_match(got, expected, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """The one comparison of a module's outputs with a reference's: the same number of outputs, then each one's
    shape and dtype, then its values. A tensor alone counts as one output."""
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    expected = list(expected) if isinstance(expected, (tuple, list)) else [expected]
    assert len(got) == len(expected), f"the module returned {len(got)} outputs, the reference {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        g = g.detach().cpu().numpy() if isinstance(g, torch.Tensor) else np.asarray(g)
        e = e.detach().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e)
        assert g.shape == e.shape, f"output {i}: shape {g.shape} != reference {e.shape}"
        assert g.dtype == e.dtype, f"output {i}: dtype {g.dtype} != reference {e.dtype}"
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"output {i}")


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights and batch-norm statistics that keep activations alive through a deep random network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def export(model: torch.nn.Module, path: Path, opset: int, shape=(1, 3, 224, 224)) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), str(path), opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


def export_and_compare(arch: str, path: Path, opset: int = 17, batch_sizes=(1, 3), batch: int = 2, loader=load,
                       **kwargs):
    """torchvision's ``arch`` with random weights, exported by torch.onnx.export and converted back: verify passes
    against onnxruntime and the module computes what the original does. ``loader`` converts (default
    ``zoo.convert.load``); the converted module is returned."""
    original = randomize_(getattr(torchvision.models, arch)(**kwargs))
    module = loader(export(original, path, opset))
    report = verify(path, module, batch_sizes=batch_sizes)
    assert report.passed, str(report)
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        expected, got = original(x), module(x)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    return module


# Run before a kill job (KillRunner): the job SIGKILLs itself just before its K-th change to the files under
# $ZOO_KILL_ROOTS (os.replace, rename, unlink, remove, rmdir, mkdir, shutil.rmtree, a file opened for writing),
# K = $ZOO_KILL_AT. Changes inside a private scratch folder (named by a prefix in $ZOO_KILL_SCRATCH) are not
# counted: nothing reads them; making the folder and moving a file out of it are. Killing at K = 1, 2, ... in
# turn reaches every step, whatever the machine's speed. K = 0 kills nowhere and reports on stderr, when the job
# ends, each change ("zoo-kill: K FUNCTION PATH") and their number ("zoo-kill: N changes"), for a test that picks
# its Ks from the whole run (kill_points). KillRunner runs jobs under it.
KILL_BEFORE_NTH_CHANGE = """
import builtins, io, os, shutil, signal, sys
_seen, _log = [0], []


def _kill_settings():
    global _roots, _scratch, _kill_at
    _roots = tuple(os.environ["ZOO_KILL_ROOTS"].split(os.pathsep))
    _scratch = tuple(s for s in os.environ.get("ZOO_KILL_SCRATCH", "").split(os.pathsep) if s)
    _kill_at = int(os.environ["ZOO_KILL_AT"])
    _seen[0] = 0
    _log.clear()


def _kill_report():
    return "\\n".join([*_log, f"zoo-kill: {_seen[0]} changes"])


_kill_settings()


def _watched(module, function, counts=lambda args, kwargs: True):
    real = getattr(module, function)

    def visible(path):
        path = os.fspath(path)
        return path.startswith(_roots) and not any(s in path and "/" in path.split(s, 1)[1] for s in _scratch)

    def call(*args, **kwargs):
        paths = [a for a in args[:2 if function in ("replace", "rename") else 1] if isinstance(a, (str, os.PathLike))]
        if any(visible(p) for p in paths) and counts(args, kwargs):
            _seen[0] += 1
            _log.append(f"zoo-kill: {_seen[0]} {function} {os.fspath(paths[-1])}")
            if _seen[0] == _kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(module, function, call)


for _function in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir"):
    _watched(os, _function)
_watched(shutil, "rmtree")
_watched(builtins, "open", lambda args, kwargs: any(c in str(args[1] if len(args) > 1 else kwargs.get("mode", "r"))
                                                    for c in "wax+"))
io.open = builtins.open
"""

# A process that runs KILL_BEFORE_NTH_CHANGE, imports zoo once, then runs the job (the code after it, with sys.argv
# and $ZOO_KILL_AT from each request) in a forked child per request: a kill point costs the job, not a start of
# Python and torch. One request per line on stdin (JSON: argv, kill_at, stdout and stderr paths); one exit code per
# line back.
_KILL_SERVER = """
import json, traceback
import zoo.cli, zoo.publish.build, zoo.weights.pretrained  # what every job imports; the children share it

_job = compile(open(sys.argv[1]).read(), "kill-job", "exec")
for _line in sys.stdin:
    _request = json.loads(_line)
    _pid = os.fork()
    if _pid == 0:
        for _fd, _name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(_request[_name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), _fd)
        os.environ["ZOO_KILL_AT"] = str(_request["kill_at"])
        _kill_settings()
        sys.argv = ["-c", *_request["argv"]]
        _code = 0
        try:
            exec(_job, {"__name__": "__main__"})
        except SystemExit as e:
            _code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            _code = 1
        if _kill_at == 0:
            print(_kill_report(), file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_code)
    _, _status = os.waitpid(_pid, 0)
    print(os.waitstatus_to_exitcode(_status), flush=True)
"""


class KillRunner:
    """KILL_BEFORE_NTH_CHANGE's children, forked from one process that imported zoo once (a start of Python and
    torch is most of a small job's time). ``run(K, *argv)`` runs ``job`` (Python source) killed before its K-th
    change, and gives a CompletedProcess (returncode -9 when killed, stderr as text). Use it as a context manager."""

    def __init__(self, job: str, roots, scratch: str = "", env: dict | None = None, cwd=None):
        import subprocess
        import tempfile

        self._folder = Path(tempfile.mkdtemp(prefix="zoo-kill-"))
        (self._folder / "job.py").write_text(job)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", KILL_BEFORE_NTH_CHANGE + _KILL_SERVER, str(self._folder / "job.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd,
            env={**kill_env(roots, 0, scratch), **(env or {})})
        self._runs = 0

    def run(self, kill_at: int, *argv: str):
        import json
        import subprocess

        self._runs += 1
        stdout, stderr = self._folder / f"stdout-{self._runs}", self._folder / f"stderr-{self._runs}"
        self._proc.stdin.write(json.dumps({"kill_at": kill_at, "argv": list(map(str, argv)), "stdout": str(stdout),
                                           "stderr": str(stderr)}) + "\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline()
        assert answer, f"the kill runner died (exit {self._proc.wait()})"
        return subprocess.CompletedProcess(argv, int(answer), stdout.read_text(), stderr.read_text())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        import shutil

        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        shutil.rmtree(self._folder, ignore_errors=True)


def kill_env(roots, kill_at: int, scratch: str = "") -> dict[str, str]:
    """The environment of a child running KILL_BEFORE_NTH_CHANGE: this one's, watching ``roots``."""
    return {**os.environ, "ZOO_KILL_ROOTS": os.pathsep.join(map(str, roots)), "ZOO_KILL_SCRATCH": scratch,
            "ZOO_KILL_AT": str(kill_at)}


def changes_counted(stderr: str) -> int:
    """The number of changes a child run with K = 0 reported."""
    return int(re.search(r"zoo-kill: (\d+) changes", stderr).group(1))


def changes_listed(stderr: str) -> list[tuple[str, str]]:
    """(function, path) of each change a child run with K = 0 made, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^zoo-kill: \d+ (\w+) (.*)$", stderr, re.MULTILINE)]


def kill_points(changes: list[tuple[str, str]], seed: int = 0, extra: int = 3) -> list[int]:
    """The Ks a sampled kill sweep uses (1-based; the run that is not killed comes after them): the first and the
    last change, each rename (a commit point: the change just before it and the rename itself, so that a kill lands
    on each side of it), and ``extra`` more drawn with a fixed seed. The slow tier kills at every K instead."""
    import random

    n = len(changes)
    points = {1, n}
    for k, (function, _) in enumerate(changes, start=1):
        if function in ("replace", "rename"):
            points.update({k, k + 1} - {n + 1})
    rest = sorted(set(range(1, n + 1)) - points)
    points.update(random.Random(seed).sample(rest, min(extra, len(rest))))
    return sorted(points)


# The `tuned` fixture (conftest): a fine-tuned folder of a seeded 6-class SqueezeNet at 32 px, labels a-f.
TUNED_SIZE, TUNED_LABELS = 32, list("abcdef")


def finetuned_folder(folder: Path) -> Path:
    """Save the `tuned` model (TUNED_SIZE, TUNED_LABELS) as a fine-tuned folder (config.json) and return it."""
    import zoo
    from zoo.modeling.preprocess import resized
    from zoo.publish.hub import save_pretrained

    model = randomize_(zoo.squeezenet1_1(num_classes=len(TUNED_LABELS)), seed=1)
    with torch.no_grad():
        model.get_classifier().bias += 50.0  # no class sits at the ReLU's zero: every image has a strict ranking
    model.pretrained_cfg.update(input_size=[3, TUNED_SIZE, TUNED_SIZE], labels=TUNED_LABELS,
                                preprocessing=resized(model.pretrained_cfg["preprocessing"], TUNED_SIZE))
    save_pretrained(model, folder)
    return folder


def noise(path: Path, seed: int, size=(40, 36)) -> Path:
    """An image of seeded noise at ``path`` (its folders made)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path
