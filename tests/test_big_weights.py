"""Big weights stay in memory once, also when the conversion runs the graph to learn shapes (shapes.probe).

The measurement is scripts/corpus.py's, the one README's "Big weights" table comes from: a fresh process
converting the file, its peak RSS above what its imports took."""
from __future__ import annotations

import mmap
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from zoo.convert import load, shapes, verify
from zoo.convert.ir import build_graph
from zoo.convert.loader import load_model

from .helpers import make_model, script, tensor

corpus = script("corpus")


def _reshape_lost_between_big_layers(path: Path, size: int = 4096) -> Path:
    """Two size x size fully-connected layers (2 * 64 MB of float32 at the default size), a dynamic batch,
    and between them a Reshape whose target onnx inference cannot follow (float arithmetic on Shape), so the
    second layer's input has an unknown rank until the probe runs the graph."""
    rng = np.random.default_rng(0)
    inits = {f"w{i}": rng.standard_normal((size, size), dtype=np.float32) for i in (1, 2)}
    inits.update({"one": np.array(1.0, np.float32), "i0": np.array([0]), "i1": np.array([1]),
                  "minus1": np.array([-1])})
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Shape", ["h"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sf", "one"], ["sf1"]),
        helper.make_node("Cast", ["sf1"], ["s2"], to=TensorProto.INT64),
        helper.make_node("Slice", ["s2", "i0", "i1"], ["batch"]),
        helper.make_node("Concat", ["batch", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
    ]
    make_model(nodes, [tensor("x", ["batch", size])], [tensor("y", ["batch", size])], inits, path=path)
    return path


def test_the_guard_graph_needs_the_probe_and_the_probe_runs_it_on_the_weights_in_place(tmp_path, monkeypatch):
    path = _reshape_lost_between_big_layers(tmp_path / "lost.onnx", size=64)
    inferred = onnx.shape_inference.infer_shapes(onnx.load(path), data_prop=True)
    r = next(vi for vi in inferred.graph.value_info if vi.name == "r").type.tensor_type.shape.dim
    assert [d.HasField("dim_value") for d in r] == [False, False] and r[0].dim_param != "batch"
    asked = []
    probe = shapes.probe
    monkeypatch.setattr(shapes, "probe", lambda model, inputs, wanted, weights:
                        asked.append((wanted, sorted(weights))) or probe(model, inputs, wanted, weights))
    graph = build_graph(load_model(path))
    assert asked == [(["r"], ["w1", "w2"])]
    assert graph.values["r"].shape == ("batch", 64)
    assert verify(path, load(path), batch_sizes=(1, 3)).passed


def test_weights_are_read_from_a_map_of_the_file(tmp_path):
    path = _reshape_lost_between_big_layers(tmp_path / "lost.onnx", size=64)
    loaded = load_model(path)
    assert loaded.weights
    for array in loaded.weights.values():
        while isinstance(array.base, np.ndarray):
            array = array.base
        base = array.base.obj if isinstance(array.base, memoryview) else array.base
        assert isinstance(base, mmap.mmap), type(base)

def test_probing_a_graph_with_big_weights_holds_them_in_memory_about_once(tmp_path, monkeypatch):
    """A probe that serializes the model, or lets onnxruntime copy (or prepack) the weights, peaks at 2-4x."""
    path = _reshape_lost_between_big_layers(tmp_path / "big.onnx")
    weights_mb = 2 * 4096 * 4096 * 4 / 2**20
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    done = corpus.measure_conversion(path)
    left = [p.name for p in scratch.iterdir() if p.name != ".ses"]  # .ses: onnxruntime's 51-byte session id
    assert not left, f"the measured conversion's 128 MB output was left behind: {left}"
    assert done.probed, "the guard graph no longer takes the probe path"
    assert done.extra_mb <= 1.5 * weights_mb, \
        f"{done.extra_mb:.0f} MB above the imports for {weights_mb:.0f} MB of weights ({done.seconds:.1f} s)"


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    with open("/proc/self/maps") as f:
        rows = [line.split() for line in f if line.rstrip().endswith(str(path))]
    return [tuple(int(x, 16) for x in row[0].split("-")) for row in rows]


def test_pretrained_weights_are_a_map_of_the_safetensors_file(tmp_path):
    """Loading weights (VGG-19's are 548 MB) holds no second copy: every parameter lives in the file's map."""
    from safetensors.torch import save_file

    import zoo

    state = {k: v.contiguous() for k, v in zoo.squeezenet1_1().state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    model = zoo.create_model("squeezenet1_1", pretrained=tmp_path)
    ranges = _mapped_ranges((tmp_path / "model.safetensors").resolve())
    assert ranges, "the weights file is not mapped"
    for name, p in model.named_parameters():
        assert any(lo <= p.data_ptr() < hi for lo, hi in ranges), f"{name} is a copy, not the file's map"
