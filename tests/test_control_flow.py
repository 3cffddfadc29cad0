"""If and Loop: branches and bodies as functions of the module, constant conditions folded away."""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

from zoo.convert import convert, load, shapes

from .helpers import assert_outputs_match, make_model, run_onnxruntime as _ort, tensor

RNG = np.random.default_rng(0)
W = RNG.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32)


def _branch(name, nodes, out):
    return helper.make_graph(nodes, name, [], [tensor(out, None)])


def _runtime_if(path):
    """y = conv(x) + x if sum(x) > 0 else relu(x) * scale; the branches read x, the weight and scale."""
    then_g = _branch("then", [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                              helper.make_node("Add", ["c", "x"], ["t"])], "t")
    else_g = _branch("else", [helper.make_node("Relu", ["x"], ["r"]),
                              helper.make_node("Mul", ["r", "scale"], ["e"])], "e")
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    inits = {"w": W, "zero": np.array(0, np.float32), "scale": np.array(2.5, np.float32)}
    make_model(nodes, [tensor("x", ["batch", 3, 5, 5])], [tensor("y", ["batch", 3, 5, 5])], inits, path=path)
    return path


def test_if_on_a_runtime_condition_runs_either_branch(tmp_path):
    path = _runtime_if(tmp_path / "if.onnx")
    module = load(path)
    for sign in (1, -1):
        x = (np.abs(RNG.standard_normal((2, 3, 5, 5))) * sign).astype(np.float32)
        expected = _ort(path, {"x": x})[0]
        with torch.no_grad():
            got = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    source = convert(path, tmp_path / "out").source_path.read_text()
    assert "if bool(" in source and "def if_then(self, x):" in source


def test_if_branch_back_propagates_into_its_layer(tmp_path):
    module = load(_runtime_if(tmp_path / "if.onnx")).train()
    x = torch.rand(2, 3, 5, 5)
    module(x).square().sum().backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(g.abs().sum() > 0 for g in grads)


def test_if_on_a_condition_settled_by_shapes_is_inlined(tmp_path):
    """torch.onnx.export-style check: the channel count is 3, so only the then-branch remains."""
    then_g = _branch("then", [helper.make_node("Relu", ["x"], ["t"])], "t")
    else_g = _branch("else", [helper.make_node("Neg", ["x"], ["e"])], "e")
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["channels"], axis=0),
        helper.make_node("Equal", ["channels", "three"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    path = tmp_path / "const_if.onnx"
    make_model(nodes, [tensor("x", ["batch", 3, 4])], [tensor("y", ["batch", 3, 4])],
               {"one": np.array(1), "three": np.array(3)}, path=path)
    source = convert(path, tmp_path / "out").source_path.read_text()
    assert " if " not in source and "def " not in source.split("class ")[0]
    assert source.rstrip().endswith("return torch.relu(x)")  # the shape check is gone too
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(load(path)(torch.from_numpy(x)).detach().numpy(), _ort(path, {"x": x})[0])


def test_loop_with_carried_values_scan_outputs_outer_reads_and_a_nested_if(tmp_path):
    """acc = acc * decay + x (decay read from the outer scope), scanned each step; a nested If doubles it
    on odd steps."""
    inner_then = _branch("odd", [helper.make_node("Mul", ["acc_new", "two"], ["d"])], "d")
    inner_else = _branch("even", [helper.make_node("Identity", ["acc_new"], ["k"])], "k")
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["acc_in", "decay"], ["scaled"]),
            helper.make_node("Add", ["scaled", "x"], ["acc_new"]),
            helper.make_node("Mod", ["i", "two_i"], ["parity"]),
            helper.make_node("Equal", ["parity", "one_i"], ["odd"]),
            helper.make_node("If", ["odd"], ["acc_out"], then_branch=inner_then, else_branch=inner_else),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["acc_out"], ["scan"]),
        ],
        "body",
        [tensor("i", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL), tensor("acc_in", None)],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("acc_out", None), tensor("scan", None)],
    )
    nodes = [helper.make_node("Loop", ["steps", "", "acc0"], ["acc", "history"], body=body)]
    inits = {"steps": np.array(4), "decay": np.array(0.5, np.float32), "two": np.array(2.0, np.float32),
             "two_i": np.array(2), "one_i": np.array(1)}
    path = tmp_path / "loop.onnx"
    make_model(nodes, [tensor("x", ["batch", 3]), tensor("acc0", ["batch", 3])],
               [tensor("acc", ["batch", 3]), tensor("history", [4, "batch", 3])], inits, path=path)
    x, acc0 = (RNG.standard_normal((2, 3)).astype(np.float32) for _ in range(2))
    expected = _ort(path, {"x": x, "acc0": acc0})
    got = load(path)(torch.from_numpy(x), torch.from_numpy(acc0))
    assert got[1].shape == (4, 2, 3)
    assert_outputs_match(got, expected, rtol=1e-6, atol=0)


def _rank_check(path, dims):
    """PyTorch's batched-input test: unsqueeze x unless it already has 3 dimensions; the branches differ in
    rank, so what follows (a Transpose, which needs the rank) has one only once the If is settled."""
    then_g = _branch("then", [helper.make_node("Unsqueeze", ["x", "zero_axis"], ["t"])], "t")
    else_g = _branch("else", [helper.make_node("Identity", ["x"], ["e"])], "e")
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Size", ["shape"], ["rank"]),
        helper.make_node("Equal", ["rank", "three"], ["is3"]),
        helper.make_node("Not", ["is3"], ["cond"]),
        helper.make_node("If", ["cond"], ["b"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Transpose", ["b"], ["y"]),
    ]
    make_model(nodes, [tensor("x", dims)], [tensor("y", [None, None, None])],
               {"zero_axis": np.array([0]), "three": np.array(3)}, path=path)
    return path


def test_rank_check_if_is_settled_before_shape_inference(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "probe", lambda *a: None)  # the rank must come from settling alone
    monkeypatch.setattr(shapes, "symbolic_infer", lambda *a: None)
    path = _rank_check(tmp_path / "rank_if.onnx", [2, "t", 4])
    source = convert(path, tmp_path / "out").source_path.read_text()
    assert " if " not in source and "permute(2, 1, 0)" in source
    x = RNG.standard_normal((2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(load(path)(torch.from_numpy(x)).detach().numpy(), _ort(path, {"x": x})[0])


def test_if_on_a_size_known_only_at_run_time_stays_an_if(tmp_path):
    """x.shape[-1] == 1 is unknown while the last dimension is symbolic: never taken as False."""
    then_g = _branch("then", [helper.make_node("Neg", ["x"], ["t"])], "t")
    else_g = _branch("else", [helper.make_node("Relu", ["x"], ["e"])], "e")
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "last"], ["n"], axis=0),
        helper.make_node("Equal", ["n", "one"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    path = tmp_path / "dyn_if.onnx"
    make_model(nodes, [tensor("x", ["batch", 3, "t"])], [tensor("y", ["batch", 3, "t"])],
               {"last": np.array(-1), "one": np.array(1)}, path=path)
    module = load(path)
    for t in (1, 4):
        x = RNG.standard_normal((2, 3, t)).astype(np.float32)
        np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), _ort(path, {"x": x})[0])


def test_scan_carries_a_state_and_stacks_outputs_in_both_directions(tmp_path):
    """A running sum over axis 1, read last to first, its steps stacked along axis 1 as well."""
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "x_t"], ["acc_out"]),
         helper.make_node("Mul", ["acc_out", "scale"], ["y_t"])],
        "body", [tensor("acc_in", ["batch"]), tensor("x_t", ["batch"])],
        [tensor("acc_out", ["batch"]), tensor("y_t", ["batch"])])
    node = helper.make_node("Scan", ["acc0", "x"], ["acc", "ys"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[-1])
    path = tmp_path / "scan.onnx"
    make_model([node], [tensor("acc0", ["batch"]), tensor("x", ["batch", 5])],
               [tensor("acc", ["batch"]), tensor("ys", ["batch", 5])], {"scale": np.array(0.5, np.float32)},
               path=path)
    acc0, x = RNG.standard_normal(3).astype(np.float32), RNG.standard_normal((3, 5)).astype(np.float32)
    got = load(path)(torch.from_numpy(acc0), torch.from_numpy(x))
    assert_outputs_match(got, _ort(path, {"acc0": acc0, "x": x}), rtol=1e-6, atol=0)
