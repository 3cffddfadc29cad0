"""Sequences, TreeEnsemble aggregates and TfIdfVectorizer weighting: what the ONNX node cases leave out."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from zoo.convert import ConversionError, convert, load, verify

from .helpers import make_model, tensor

RNG = np.random.default_rng(0)


def test_split_edit_and_concat_a_sequence_matches_onnxruntime(tmp_path):
    """Split along channels, drop the last piece, put a scaled copy of the first in front, join them again."""
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["pieces"], axis=1),
        helper.make_node("SequenceErase", ["pieces", "last"], ["kept"]),
        helper.make_node("SequenceAt", ["kept", "first"], ["head"]),
        helper.make_node("Mul", ["head", "two"], ["scaled"]),
        helper.make_node("SequenceInsert", ["kept", "scaled", "first"], ["edited"]),
        helper.make_node("ConcatFromSequence", ["edited"], ["y"], axis=1),
        helper.make_node("SequenceLength", ["edited"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["y", "nf"], ["z"]),
    ]
    inits = {"last": np.array(-1, np.int64), "first": np.array(0, np.int64), "two": np.array(2, np.float32)}
    path = tmp_path / "seq.onnx"
    make_model(nodes, [tensor("x", ["batch", 4, 5])], [tensor("z", ["batch", 4, 5])], inits, path=path)
    module = load(path)
    report = verify(path, module)
    assert report.passed, str(report)
    x = torch.from_numpy(RNG.standard_normal((2, 4, 5)).astype(np.float32))
    expected = torch.cat([2 * x[:, :1], x[:, :3]], 1) * 4
    torch.testing.assert_close(module(x), expected)
    source = convert(path, tmp_path / "out").source_path.read_text()
    assert "torch.cat(" in source and "list(" in source and "import numpy" not in source


def _ml_model(node, x, y, opsets):
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 10
    return model


def _tree(aggregate: int, **extra):
    """Two trees over 3 features, 2 targets: x0 <= 0.5 ? (x2 < 1 ? leaf : leaf) : leaf, and a stump on x1."""
    splits = np.array([0.5, 1.0, 0.0], np.float32)
    return helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", aggregate_function=aggregate, n_targets=2,
        tree_roots=[0, 2], nodes_featureids=[0, 2, 1], nodes_modes=helper.make_tensor("m", TensorProto.UINT8, [3],
                                                                                       [0, 1, 3]),
        nodes_splits=helper.make_tensor("s", TensorProto.FLOAT, [3], splits),
        nodes_truenodeids=[1, 0, 3], nodes_trueleafs=[0, 1, 1], nodes_falsenodeids=[2, 1, 4],
        nodes_falseleafs=[1, 1, 1], leaf_targetids=[0, 1, 1, 0, 1],
        leaf_weights=helper.make_tensor("w", TensorProto.FLOAT, [5], [1.5, -2.0, 4.0, 0.25, 8.0]), **extra)


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
def test_tree_ensemble_aggregates_match_the_reference(tmp_path, aggregate):
    model = _ml_model(_tree(aggregate), tensor("X", [None, 3]), tensor("Y", [None, 2]), [("", 21), ("ai.onnx.ml", 5)])
    x = RNG.standard_normal((16, 3)).astype(np.float32)
    x[3, 0] = np.nan
    path = tmp_path / "tree.onnx"
    onnx.save(model, str(path))
    expected = ReferenceEvaluator(model).run(None, {"X": x})[0]
    with torch.no_grad():
        got = load(path)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_tree_ensemble_with_a_cycle_is_refused(tmp_path):
    node = _tree(1)
    for attr in node.attribute:
        if attr.name == "nodes_trueleafs":
            attr.ints[:] = [0, 0, 1]  # node 1's true branch goes back to node 0
    model = _ml_model(node, tensor("X", [None, 3]), tensor("Y", [None, 2]), [("", 21), ("ai.onnx.ml", 5)])
    path = tmp_path / "cycle.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ConversionError, match="cycle"):
        load(path)


@pytest.mark.parametrize("mode", ["IDF", "TFIDF"])
def test_tfidf_weighting_matches_the_reference(tmp_path, mode):
    node = helper.make_node("TfIdfVectorizer", ["X"], ["Y"], mode=mode, min_gram_length=1, max_gram_length=2,
                            max_skip_count=1, ngram_counts=[0, 3], ngram_indexes=[0, 1, 2, 3, 4],
                            pool_int64s=[2, 3, 5, 2, 3, 5, 7], weights=[0.5, 1.0, 2.0, 4.0, 8.0])
    model = _ml_model(node, tensor("X", [2, 8], TensorProto.INT64), tensor("Y", [2, 5]), [("", 21)])
    path = tmp_path / "tfidf.onnx"
    onnx.save(model, str(path))
    x = np.array([[2, 3, 2, 3, 5, 7, 5, 7], [5, 1, 7, 2, 9, 3, 2, 2]], np.int64)
    expected = ReferenceEvaluator(model).run(None, {"X": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(load(path)(torch.from_numpy(x)).numpy(), expected)
