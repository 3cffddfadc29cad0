"""LSTM, GRU and RNN as nn.LSTM / nn.GRU / nn.RNN, weights reordered into PyTorch's gate order.

ONNX stacks gates as LSTM i,o,f,c and GRU z,r,h; PyTorch as LSTM i,f,g,o and GRU r,z,n. What PyTorch's
layers cannot express exactly (peepholes, clip, other activations, GRU with linear_before_reset=0,
per-sample sequence lengths, weights computed at run time) runs as an explicit step loop instead.
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


CELL_LOOP = '''
def recurrent_cells(kind, x, w, r, b=None, lens=None, h0=None, c0=None, p=None, acts=(), clip=None,
                    linear_before_reset=False, input_forget=False, batch_first=False, direction="forward"):
    # ONNX LSTM/GRU/RNN step by step, for what nn.LSTM/GRU/RNN cannot express (peepholes, clip, other
    # activations, GRU's linear_before_reset=0, per-sample sequence lengths, weights computed at run time).
    funcs = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu, "Softsign": F.softsign,
             "Softplus": F.softplus, "HardSigmoid": lambda v: torch.clamp(0.2 * v + 0.5, 0.0, 1.0),
             "LeakyRelu": lambda v: F.leaky_relu(v, 0.01), "Elu": F.elu}
    if batch_first:
        x = x.transpose(0, 1)
        h0 = None if h0 is None else h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    steps, batch, directions, hidden = x.shape[0], x.shape[1], w.shape[0], r.shape[-1]
    t = torch.arange(steps, device=x.device).unsqueeze(1)
    lens = torch.full((batch,), steps, device=x.device) if lens is None else lens.to(x.device)
    valid = t < lens  # [steps, batch]
    ys, hs, cs = [], [], []
    for d in range(directions):
        per = len(acts) // directions
        f, g, h = ([funcs[a] for a in acts[per * d:per * (d + 1)]] + [None, None])[:3]
        order = t.expand(steps, batch)
        if d == 1 or direction == "reverse":  # each sequence's valid steps, last first
            order = torch.where(valid, lens - 1 - t, t)
        seq = x.gather(0, order.unsqueeze(2).expand(-1, -1, x.shape[2]))
        bias = torch.zeros(2 * w.shape[1], dtype=x.dtype, device=x.device) if b is None else b[d]
        wb, rb = bias.chunk(2)
        state = torch.zeros(batch, hidden, dtype=x.dtype, device=x.device) if h0 is None else h0[d]
        cell = torch.zeros(batch, hidden, dtype=x.dtype, device=x.device) if c0 is None else c0[d]
        out = []
        for step in range(steps):
            xw = seq[step] @ w[d].T + wb
            if kind == "GRU":
                xz, xr, xh = xw.chunk(3, 1)
                rz, rr, rh = (state @ r[d].T).chunk(3, 1)
                bz, br, bh = rb.chunk(3)
                z, reset = (f(v if clip is None else v.clamp(-clip, clip)) for v in (xz + rz + bz, xr + rr + br))
                if linear_before_reset:
                    pre = xh + reset * (rh + bh)
                else:
                    pre = xh + (reset * state) @ r[d].T.chunk(3, 1)[2] + bh
                new = (1 - z) * g(pre if clip is None else pre.clamp(-clip, clip)) + z * state
            elif kind == "LSTM":
                gates = xw + state @ r[d].T + rb
                gates = gates if clip is None else gates.clamp(-clip, clip)
                gi, go, gf, gc = gates.chunk(4, 1)
                pi, po, pf = (None, None, None) if p is None else p[d].chunk(3)
                i = f(gi if pi is None else gi + pi * cell)
                fg = 1 - i if input_forget else f(gf if pf is None else gf + pf * cell)
                new_cell = fg * cell + i * g(gc)
                o = f(go if po is None else go + po * new_cell)
                new = o * h(new_cell)
                cell = torch.where(valid[step].unsqueeze(1), new_cell, cell)
            else:
                pre = xw + state @ r[d].T + rb
                new = f(pre if clip is None else pre.clamp(-clip, clip))
            mask = valid[step].unsqueeze(1)
            state = torch.where(mask, new, state)
            out.append(torch.where(mask, new, torch.zeros_like(new)))
        y = torch.stack(out).gather(0, order.unsqueeze(2).expand(-1, -1, hidden))  # back to time order
        ys.append(y)
        hs.append(state)
        cs.append(cell)
    y, h, c = torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)
    if batch_first:
        return y.permute(2, 0, 1, 3), h.transpose(0, 1), c.transpose(0, 1)
    return y, h, c
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


# Names the step loop knows; the generated code spells them from this table, never from the file.
_FALLBACK_ACTIVATIONS = {a: a for a in ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus", "HardSigmoid",
                                        "LeakyRelu", "Elu")}
_DIRECTIONS = {d: d for d in ("forward", "reverse", "bidirectional")}


def _cell_loop(ctx, op: str, direction: str, directions: int):
    """The explicit step loop: exact where nn.LSTM/GRU/RNN is not, still trainable (weights are parameters)."""
    acts = list(ctx.attr("activations") or _DEFAULT_ACTIVATIONS[op] * directions)
    if ctx.attr("activation_alpha") or ctx.attr("activation_beta") or not set(acts) <= set(_FALLBACK_ACTIVATIONS):
        raise Unsupported(f"activations {acts} with their parameters")
    if direction not in _DIRECTIONS:
        raise Unsupported(f"direction {direction!r}")
    fn = ctx.helper("recurrent_cells", CELL_LOOP)
    args = [repr(op), ctx.x(0), ctx.x(1), ctx.x(2)]
    names = {3: "b", 4: "lens", 5: "h0", 6: "c0", 7: "p"}
    for i, name in names.items():
        if ctx.has_input(i):
            args.append(f"{name}={ctx.x(i)}")
    args.append(f"acts=({', '.join(repr(_FALLBACK_ACTIVATIONS[a]) for a in acts)},)")
    if ctx.attr("clip") is not None:
        args.append(f"clip={ctx.lit(float(ctx.attr('clip')))}")
    if op == "GRU" and ctx.attr("linear_before_reset", 0):
        args.append("linear_before_reset=True")
    if op == "LSTM" and ctx.attr("input_forget", 0):
        args.append("input_forget=True")
    if ctx.attr("layout", 0):
        args.append("batch_first=True")
    if direction != "forward":
        args.append(f"direction={_DIRECTIONS[direction]!r}")
    expr = f"{fn}({', '.join(args)})"
    n = len(ctx.node.outputs)
    return Multi(f"{expr}[:{n}]") if n > 1 else f"{expr}[0]"


def _recurrent(op: str):
    def handler(ctx):
        direction = ctx.attr("direction", "forward")
        directions = 2 if direction == "bidirectional" else 1
        w, r = ctx.const(1), ctx.const(2)
        b = ctx.const(3) if ctx.has_input(3) else None
        try:
            _check(ctx, op, directions)
        except Unsupported:
            return _cell_loop(ctx, op, direction, directions)
        if w is None or r is None or (ctx.has_input(3) and b is None):
            return _cell_loop(ctx, op, direction, directions)
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
