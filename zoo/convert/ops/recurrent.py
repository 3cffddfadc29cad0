"""LSTM, GRU and RNN as nn.LSTM / nn.GRU / nn.RNN, weights reordered into PyTorch's gate order.

ONNX stacks gates as LSTM i,o,f,c and GRU z,r,h; PyTorch as LSTM i,f,g,o and GRU r,z,n. A layer
PyTorch cannot express exactly (peepholes, clip, other activations, GRU with linear_before_reset=0,
per-sample sequence lengths) is refused with the reason.
"""
from __future__ import annotations

import numpy as np

from ..errors import Unsupported
from ..lower import Multi
from ..registry import register_op

# Which ONNX gate block goes to each PyTorch gate position.
_GATE_ORDER = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2], "RNN": [0]}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}

RUN_RECURRENT = '''
def run_recurrent(layer, x, h0=None, c0=None, batch_first=False, reverse=False):
    # An nn.LSTM/GRU/RNN with ONNX's outputs: Y keeps a direction axis; Y_h (and Y_c) as ONNX lays them out.
    if batch_first and h0 is not None:
        h0 = h0.transpose(0, 1).contiguous()
        c0 = None if c0 is None else c0.transpose(0, 1).contiguous()
    if isinstance(layer, nn.LSTM) and (h0 is not None or c0 is not None):
        h0 = torch.zeros_like(c0) if h0 is None else h0
        state = (h0, torch.zeros_like(h0) if c0 is None else c0)
    else:
        state = h0
    time_axis = 1 if batch_first else 0
    y, h = layer(x.flip(time_axis) if reverse else x, state)
    y = y.flip(time_axis) if reverse else y
    h, c = h if isinstance(h, tuple) else (h, None)
    y = y.unflatten(2, (2 if layer.bidirectional else 1, layer.hidden_size))
    if batch_first:
        return y, h.transpose(0, 1), None if c is None else c.transpose(0, 1)
    return y.transpose(1, 2), h, c
'''


def _reorder(weight: np.ndarray, op: str, hidden: int) -> np.ndarray:
    blocks = np.split(weight, len(_GATE_ORDER[op]), axis=0)
    assert all(b.shape[0] == hidden for b in blocks)
    return np.concatenate([blocks[i] for i in _GATE_ORDER[op]], axis=0)


def _check(ctx, op: str, directions: int) -> None:
    acts = list(ctx.attr("activations") or [])
    allowed = [_DEFAULT_ACTIVATIONS[op] * directions] + ([["Relu"] * directions] if op == "RNN" else [])
    if acts and acts not in allowed:
        raise Unsupported(f"activations {acts} (nn.{op} computes {_DEFAULT_ACTIVATIONS[op]})")
    if ctx.attr("clip") is not None:
        raise Unsupported("clip (nn.LSTM/GRU/RNN do not clip)")
    if op == "LSTM" and ctx.attr("input_forget", 0):
        raise Unsupported("input_forget=1")
    if op == "LSTM" and ctx.has_input(7):
        peep = ctx.const(7)
        if peep is None or np.any(peep):
            raise Unsupported("peepholes (nn.LSTM has none)")
    if op == "GRU" and not ctx.attr("linear_before_reset", 0):
        raise Unsupported("linear_before_reset=0 (nn.GRU applies the reset gate after the linear map)")
    if ctx.has_input(4):
        lens = ctx.const(4)
        seq = (ctx.shape(0) or [None, None])[1 if ctx.attr("layout", 0) else 0]
        if lens is None or not isinstance(seq, int) or np.any(lens != seq):
            raise Unsupported("sequence_lens that may differ from the sequence length")


def _recurrent(op: str):
    def handler(ctx):
        direction = ctx.attr("direction", "forward")
        directions = 2 if direction == "bidirectional" else 1
        _check(ctx, op, directions)
        w, r = ctx.require_const(1, "W"), ctx.require_const(2, "R")
        b = ctx.const(3) if ctx.has_input(3) else None
        if ctx.has_input(3) and b is None:
            raise Unsupported("a non-constant bias B")
        hidden = int(ctx.attr("hidden_size", r.shape[-1]))
        tensors = {}
        for d in range(directions):
            suffix = "_l0" + ("_reverse" if d == 1 else "")
            tensors["weight_ih" + suffix] = _reorder(w[d], op, hidden)
            tensors["weight_hh" + suffix] = _reorder(r[d], op, hidden)
            if b is not None:
                wb, rb = np.split(b[d], 2)
                tensors["bias_ih" + suffix] = _reorder(wb, op, hidden)
                tensors["bias_hh" + suffix] = _reorder(rb, op, hidden)
        batch_first = bool(ctx.attr("layout", 0))
        args = [f"{w.shape[-1]}", f"{hidden}"]
        if op == "RNN" and ctx.attr("activations") and ctx.attr("activations")[0] == "Relu":
            args.append("nonlinearity='relu'")
        if b is None:
            args.append("bias=False")
        if batch_first:
            args.append("batch_first=True")
        if directions == 2:
            args.append("bidirectional=True")
        layer = ctx.layer(f"nn.{op}({', '.join(args)})", **tensors)
        fn = ctx.helper("run_recurrent", RUN_RECURRENT)
        call = [layer, ctx.x(0)]
        h0 = ctx.x(5) if ctx.has_input(5) else None
        c0 = ctx.x(6) if op == "LSTM" and ctx.has_input(6) else None
        if h0 or c0:
            call.append(h0 or "None")
        if c0:
            call.append(c0)
        if batch_first:
            call.append("batch_first=True")
        if direction == "reverse":
            call.append("reverse=True")
        expr = f"{fn}({', '.join(call)})"
        n = len(ctx.node.outputs)
        return Multi(f"{expr}[:{n}]") if n > 1 else f"{expr}[0]"

    return handler


for _op in ("LSTM", "GRU", "RNN"):
    register_op(_op, since=1)(_recurrent(_op))
