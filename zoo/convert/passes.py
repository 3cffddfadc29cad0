"""Stage 3: small graph rewrites, each a function of the Graph, run in order by :func:`run_passes`."""
from __future__ import annotations

import numpy as np

from .errors import ConversionError
from .folding import fold_constants, set_const
from .ir import BATCH, Graph, Node
from .quantized import fold_dequantized_weights, fuse_fake_quantize, match_onnxruntime_rounding


def cut_at(graph: Graph, outputs: list[str] | None) -> None:
    """Make ``outputs`` the graph's outputs (e.g. the logits before a final Softmax)."""
    if not outputs:
        return
    known = set(graph.inputs) | {o for n in graph.nodes for o in n.outputs} | \
        {name for name, v in graph.values.items() if v.const is not None}
    missing = [o for o in outputs if o not in known]
    if missing:
        sample = ", ".join(repr(o) for o in graph.outputs[:3])
        raise ConversionError(f"{graph.where()}: no tensor named {', '.join(map(repr, missing))} to cut at "
                              f"(graph outputs are {sample}; `layers()` lists every tensor)")
    graph.outputs = list(outputs)


def drop_dead_nodes(graph: Graph) -> None:
    needed = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.outputs if o):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    graph.nodes = list(reversed(kept))



def forward_identities(graph: Graph) -> None:
    """Consumers of an Identity read its input directly (torch.onnx.export aliases weights this way)."""
    outputs = set(graph.outputs)
    alias: dict[str, str] = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [alias.get(i, i) for i in node.inputs]
        if node.op_type == "Identity" and node.outputs[0] not in outputs:
            alias[node.outputs[0]] = node.inputs[0]
        else:
            kept.append(node)
    graph.nodes = kept


def _per_channel(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """c as a length-``channels`` vector if it broadcasts along axis 1 of a rank-``rank`` tensor only."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(c.dtype)


def fuse_batchnorm_scale(graph: Graph) -> None:
    """Caffe2's BatchNormalization followed by per-channel Mul and Add becomes one affine BatchNorm."""
    users = graph.consumers()
    removed: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "BatchNormalization" or len([o for o in node.outputs if o]) != 1:
            continue
        scale_name, bias_name = node.inputs[1], node.inputs[2]
        scale, bias = graph.value(scale_name).const, graph.value(bias_name).const
        rank = graph.value(node.inputs[0]).rank
        if scale is None or bias is None or rank is None or len(users.get(scale_name, [])) != 1 \
                or len(users.get(bias_name, [])) != 1 or scale_name == bias_name:
            continue
        scale, bias = scale.copy(), bias.copy()
        out = node.outputs[0]
        for op in ("Mul", "Add"):
            nxt = users.get(out, [])
            if len(nxt) != 1 or nxt[0].op_type != op or out in graph.outputs:
                break
            follower = nxt[0]
            other = follower.inputs[1] if follower.inputs[0] == out else follower.inputs[0]
            c = graph.value(other).const
            vec = _per_channel(c, rank, scale.shape[0]) if c is not None else None
            if vec is None:
                break
            if op == "Mul":
                scale, bias = scale * vec, bias * vec
            else:
                bias = bias + vec
            removed.add(id(follower))
            node.outputs = list(follower.outputs)
            out = node.outputs[0]
        set_const(graph, scale_name, scale)
        set_const(graph, bias_name, bias)
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def _const_scalar(graph: Graph, name: str) -> float | None:
    c = graph.value(name).const
    return float(c.reshape(-1)[0]) if c is not None and c.size == 1 and c.dtype.kind == "f" else None


def _other_input(node: Node, name: str) -> str:
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def fuse_linear_bias(graph: Graph) -> None:
    """MatMul by a constant matrix followed by Add of a constant vector is one nn.Linear with bias."""
    users = graph.consumers()
    removed: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "MatMul" or node.domain or len(node.inputs) != 2:
            continue
        weight = graph.value(node.inputs[1]).const
        out = node.outputs[0]
        nxt = users.get(out, [])
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or len(nxt) != 1 \
                or nxt[0].op_type != "Add" or out in graph.outputs:
            continue
        bias_name = _other_input(nxt[0], out)
        bias = graph.value(bias_name).const
        if bias is None or bias.shape != (weight.shape[1],):
            continue
        graph.nodes[graph.nodes.index(node)] = Node("Linear", "zoo", node.name, [node.inputs[0], node.inputs[1], bias_name],
                                                    list(nxt[0].outputs), {}, 1)
        removed.add(id(nxt[0]))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def fuse_gelu(graph: Graph) -> None:
    """torch.onnx.export's exact GELU, x * (erf(x / sqrt(2)) + 1) * 0.5, back to one GELU."""
    users = graph.consumers()
    producer = graph.producer_of()
    removed: set[int] = set()
    for erf in graph.nodes:
        if erf.op_type != "Erf" or erf.inputs[0] not in producer:
            continue
        div = producer[erf.inputs[0]]
        if div.op_type != "Div" or abs((_const_scalar(graph, div.inputs[1]) or 0) - 2 ** 0.5) > 1e-3:
            continue
        x = div.inputs[0]
        def only_user(node: Node, op: str) -> Node | None:
            found = users.get(node.outputs[0], [])
            return found[0] if len(found) == 1 and found[0].op_type == op else None

        add = only_user(erf, "Add")
        if add is None or _const_scalar(graph, _other_input(add, erf.outputs[0])) != 1.0:
            continue
        mul = only_user(add, "Mul")
        if mul is None or _other_input(mul, add.outputs[0]) != x:
            continue
        half = only_user(mul, "Mul")
        if half is None or _const_scalar(graph, _other_input(half, mul.outputs[0])) != 0.5 or \
                len(users.get(div.outputs[0], [])) != 1:
            continue
        graph.nodes[graph.nodes.index(half)] = Node("Gelu", "", half.name, [x], list(half.outputs), {}, 20)
        removed.update(id(n) for n in (div, erf, add, mul))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


_KEEPS_DIM0 = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Clip", "HardSigmoid", "HardSwish", "Softplus",
    "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Erf", "Identity",
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN",
    "BatchNormalization", "InstanceNormalization", "Dropout", "Cast", "Softmax", "LogSoftmax", "Flatten",
    # onnxruntime's integer ops (onnx shape inference does not know them, so only this propagates the batch)
    "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool",
    "QLinearAveragePool",
}


def _keeps_dim0(node: Node) -> bool:
    if node.op_type == "Transpose":
        return bool(node.attrs.get("perm")) and node.attrs["perm"][0] == 0
    if node.op_type in ("Concat", "Split"):
        return node.attrs.get("axis", 0) != 0
    if node.op_type == "Gemm":
        return not node.attrs.get("transA", 0)
    if node.op_type == "Flatten":
        return node.attrs.get("axis", 1) != 0
    if node.op_type in ("QuantizeLinear", "DequantizeLinear", "FakeQuantize"):
        return node.attrs.get("axis", 1) != 0  # elementwise, unless quantized along dimension 0
    if node.op_type == "QLinearConcat":
        return node.attrs.get("axis", 0) != 0
    if node.op_type == "QGemm":
        return not node.attrs.get("transA", 0)
    return node.op_type in _KEEPS_DIM0


def generalize_batch(graph: Graph) -> None:
    """A Reshape to a constant ``[1, ...]`` of a per-sample tensor keeps the batch dimension instead.

    Which tensors carry the batch in dimension 0 is propagated forward from the inputs, so a chain such as
    ShuffleNet's reshape -> transpose -> reshape generalizes as a whole.
    """
    batched = {name for name in graph.inputs if (graph.value(name).shape or (None,))[0] == BATCH}
    traced = _traced_batch(graph)
    for i, node in enumerate(graph.nodes):
        runtime = [n for n in node.inputs if n and graph.value(n).const is None]
        if node.op_type == "Reshape" and len(node.inputs) >= 2 and node.inputs[0] in batched:
            if traced is not None:
                _generalize_reshape(graph, i, node, traced)
            if (graph.value(node.outputs[0]).shape or (None,))[0] == BATCH or graph.nodes[i] is not node:
                batched.add(node.outputs[0])
            continue
        out = graph.value(node.outputs[0]) if node.outputs else None
        if out is not None and runtime and runtime[0] in batched and _keeps_dim0(node):
            batched.add(out.name)
            if out.shape:
                out.shape = (BATCH,) + tuple(out.shape[1:])
        elif out is not None and (out.shape or (None,))[0] == BATCH:
            batched.add(out.name)


def _traced_batch(graph: Graph) -> int | None:
    """The batch size the graph's constant shapes were written for: the inputs' fixed batch, or 1 when
    they declare none (zoo's own exports); None when fixed inputs disagree, so nothing is generalized."""
    fixed = set(graph.static_batch_inputs.values())
    if len(fixed) > 1:
        return None
    return fixed.pop() if fixed else 1


def _generalize_reshape(graph: Graph, i: int, node: Node, traced: int) -> None:
    # Only a target whose first dimension is the traced batch follows the batch: a Reshape of a batch-2 graph
    # to [1, ...] is a size mismatch that must still fail at run time, as it does in onnxruntime.
    target = graph.value(node.inputs[1]).const
    data = graph.value(node.inputs[0])
    if target is None or target.ndim != 1 or not len(target) or int(target[0]) != traced or data.shape is None:
        return
    if not all(isinstance(d, int) for d in data.shape[1:]):
        return
    per_sample = int(np.prod(data.shape[1:]))
    rest = [int(d) for d in target[1:]]
    if -1 not in rest and 0 not in rest and int(np.prod(rest)) != per_sample:
        return
    out = graph.value(node.outputs[0])
    if len(target) == 2:
        graph.nodes[i] = Node("Flatten", "", node.name, [node.inputs[0]], node.outputs, {"axis": 1},
                              max(node.opset, 1))
    else:
        name = node.inputs[1] + "_batch"
        set_const(graph, name, np.array([0] + rest, dtype=np.int64))
        node.inputs = [node.inputs[0], name]
        node.attrs.pop("allowzero", None)
    out.shape = (BATCH,) + tuple(out.shape[1:]) if out.shape else (BATCH,)


def _sole_user(users: dict[str, list[Node]], graph: Graph, name: str, op: str) -> Node | None:
    found = users.get(name, [])
    ok = len(found) == 1 and found[0].op_type == op and not found[0].domain and name not in graph.outputs
    return found[0] if ok else None


def fuse_channel_shuffle(graph: Graph) -> None:
    """ShuffleNet's channel shuffle, Reshape (N, C, H, W) -> (N, g, C/g, H, W), Transpose (0, 2, 1, 3, 4),
    Reshape -> (N, C, H, W), becomes one ``ChannelShuffle`` node: it reads as a shuffle and works at any
    batch and image size. Runs after generalize_batch, so a batch copied with 0 is accepted."""
    users = graph.consumers()
    removed: set[int] = set()
    for i, first in enumerate(graph.nodes):
        if first.op_type != "Reshape" or first.domain or len(first.inputs) < 2 or first.attrs.get("allowzero"):
            continue
        shape = graph.value(first.inputs[0]).shape
        split = graph.value(first.inputs[1]).const
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or split is None or split.shape != (5,):
            continue
        n, groups, per_group, h, w = (int(d) for d in split)
        if n not in (0, shape[0]) or groups < 1 or per_group < 1 or groups * per_group != shape[1] \
                or [h, w] != list(shape[2:]):
            continue
        swap = _sole_user(users, graph, first.outputs[0], "Transpose")
        if swap is None or list(swap.attrs.get("perm", [])) != [0, 2, 1, 3, 4]:
            continue
        last = _sole_user(users, graph, swap.outputs[0], "Reshape")
        merge = graph.value(last.inputs[1]).const if last is not None and len(last.inputs) > 1 else None
        if merge is None or merge.shape != (4,) or last.attrs.get("allowzero"):
            continue
        if int(merge[0]) not in (0, shape[0]) or int(merge[1]) not in (-1, shape[1]) or \
                [int(d) for d in merge[2:]] != list(shape[2:]):
            continue
        graph.nodes[i] = Node("ChannelShuffle", "zoo", first.name, [first.inputs[0]], list(last.outputs),
                              {"groups": groups}, 1)
        removed.update((id(swap), id(last)))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
def adapt_global_pool(graph: Graph) -> None:
    """An AveragePool or MaxPool whose window covers the whole unpadded feature map becomes the global
    pool: the same numbers at the traced size, and adaptive (any input size) in the generated code. Asked
    of a graph with no such pooling (GoogLeNet's padded one), it refuses rather than quietly keep it fixed."""
    adapted = 0
    for node in graph.nodes:
        if node.op_type not in ("AveragePool", "MaxPool") or len(node.outputs) != 1:
            continue
        shape = graph.value(node.inputs[0]).shape
        kernel = list(node.attrs.get("kernel_shape", []))
        if shape is None or len(shape) < 3 or list(shape[2:]) != kernel or any(node.attrs.get("pads", [])) \
                or any(d != 1 for d in node.attrs.get("dilations", [1] * len(kernel))) \
                or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            continue
        node.op_type = "GlobalAveragePool" if node.op_type == "AveragePool" else "GlobalMaxPool"
        node.attrs = {}
        adapted += 1
    if not adapted:
        raise ConversionError(f"{graph.where()}: global_pool='adaptive', but no AveragePool or MaxPool covers the "
                              "whole unpadded feature map; keep global_pool='fixed'")


def run_passes(graph: Graph, outputs: list[str] | None = None) -> Graph:
    cut_at(graph, outputs)
    drop_dead_nodes(graph)
    fold_dequantized_weights(graph)
    fold_constants(graph)
    forward_identities(graph)
    fuse_fake_quantize(graph)
    fuse_batchnorm_scale(graph)
    fuse_linear_bias(graph)
    fuse_gelu(graph)
    generalize_batch(graph)
    fuse_channel_shuffle(graph)
    match_onnxruntime_rounding(graph)
    drop_dead_nodes(graph)
    return graph


__all__ = ["run_passes", "cut_at", "drop_dead_nodes", "forward_identities", "fuse_batchnorm_scale",
           "generalize_batch", "fuse_channel_shuffle", "adapt_global_pool"]
