"""Control flow: If, Loop and Scan, whose subgraphs become module-level functions of ``self``.

A subgraph is lowered by the same handlers as the main graph, into a statement list of its own, and
emitted by the same :func:`emit_body`, so branches and loop bodies read like the rest of the module.
Its reads of the outer scope become arguments. An If whose condition is constant once shapes are known
(exporters leave many) is replaced by the taken branch, inline.

These handlers reach into the lowering (``ctx._lowering``): a subgraph needs its statement list, its names
and its layers, which no other op touches.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConversionError, Unsupported
from ..ir import Graph, Node, Value, _attributes, _dims, implicit_inputs
from ..lower import TOKEN, Multi
from ..naming import RESERVED, Namespace, sanitize
from ..registry import find_handler, register_op
from ..settle import STATIC_OPS


def _outer_names(ctx) -> dict[str, str]:
    """Original outer-scope name -> the name the passes left it under (Identity forwarding renames)."""
    explicit = len(ctx.node.proto.input) if ctx.node.proto is not None else ctx.num_inputs
    return dict(zip(implicit_inputs(ctx.node.proto), ctx.node.inputs[explicit:]))


def subgraph(ctx, proto: onnx.GraphProto, renamed: dict[str, str]) -> Graph:
    """A Graph over ``proto`` that shares the outer graph's values, constant-folded like the main graph."""
    from ..passes import drop_dead_nodes, fold_constants

    outer = ctx._lowering.graph
    values = outer.values
    for t in proto.initializer:
        array = numpy_helper.to_array(t)
        values[t.name] = Value(t.name, tuple(array.shape), array.dtype, array)
    for vi in proto.input:
        shape, dtype = _dims(vi.type)
        value = values.setdefault(vi.name, Value(vi.name))
        value.shape, value.dtype = value.shape or shape, value.dtype or dtype
    nodes = []
    for n in proto.node:
        domain = "" if n.domain in ("", "ai.onnx") else n.domain
        if domain not in outer.opsets:
            raise ConversionError(f"{outer.where()}: node {n.name!r} uses domain {domain!r} with no opset import")
        inputs = [renamed.get(i, i) for i in list(n.input) + implicit_inputs(n)]
        nodes.append(Node(n.op_type, domain, n.name, inputs, list(n.output), _attributes(n), outer.opsets[domain], n))
        for out in n.output:
            values.setdefault(out, Value(out))
    _infer_shapes(proto, values, outer, {v: k for k, v in renamed.items()})
    sub = Graph(nodes, values, [i.name for i in proto.input], [renamed.get(o.name, o.name) for o in proto.output],
                outer.opsets, outer.source, outer.producer)
    fold_constants(sub)
    drop_dead_nodes(sub)
    return sub


def _infer_shapes(proto: onnx.GraphProto, values: dict, outer: Graph, original: dict[str, str]) -> None:
    """Shape inference on the subgraph alone, its outer-scope reads declared with what is known of them
    by now (the main graph's inference leaves many subgraph values without a rank)."""
    g = onnx.GraphProto()
    g.CopyFrom(proto)
    known = {i.name for i in g.input} | {t.name for t in g.initializer}
    for name in implicit_inputs_of_graph(proto):
        value = values.get(original.get(name, name))
        if name in known or value is None:
            continue
        if value.const is not None and value.const.size <= 64:  # small constants feed data propagation
            g.initializer.append(numpy_helper.from_array(value.const, name))
        elif value.shape is not None and value.dtype is not None and value.const is None:
            g.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
        elif value.const is not None:
            g.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.const.dtype), list(value.const.shape)))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in outer.opsets.items()])
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is a help here, not a requirement
        return
    for vi in inferred.graph.value_info:
        shape, dtype = _dims(vi.type)
        value = values.setdefault(vi.name, Value(vi.name))
        if value.shape is None and value.const is None:
            value.shape = shape
        value.dtype = value.dtype or dtype


def implicit_inputs_of_graph(proto: onnx.GraphProto) -> list[str]:
    holder = onnx.NodeProto()
    holder.attribute.append(helper.make_attribute("g", proto))
    return implicit_inputs(holder)


def lower_nodes(ctx, sub: Graph) -> list:
    """Statements of the subgraph's nodes, lowered by their handlers (layers land in the module)."""
    lowering = ctx._lowering
    lowering.used.update(n for node in sub.nodes for n in node.inputs if n)
    lowering.used.update(sub.outputs)
    saved, lowering.parts.statements = lowering.parts.statements, []
    try:
        for node in sub.nodes:
            handler = find_handler(node.domain, node.op_type, node.opset)
            if handler is None:
                raise ConversionError(f"{lowering.graph.where(node)}: unsupported op {node.op_type} inside "
                                      f"the subgraph of {ctx.node.describe()}")
            try:
                result = handler(type(ctx)(lowering, node))
            except Unsupported as exc:
                raise ConversionError(f"{lowering.graph.where(node)}: {exc}") from None
            lowering._add_statements(node, result)
        for out in sub.outputs:
            if lowering.graph.value(out).const is not None:
                lowering.reference(out)  # a constant result still needs its buffer
        return lowering.parts.statements
    finally:
        lowering.parts.statements = saved


def emit_function(ctx, suffix: str, sub: Graph, statements: list, formal: list[str]) -> tuple[str, list[str]]:
    """Put ``def <name>(self, *formal, *free)`` into the module; returns its name and its free values."""
    from ..emit import emit_body

    parts = ctx._lowering.parts
    produced = {o for st in statements for o in st.outputs if o}
    free: dict[str, None] = {}
    for name in [parts.token_values[int(m.group(1))] for st in statements for m in TOKEN.finditer(st.expr)] \
            + sub.outputs:
        if name not in produced and name not in formal and ctx._lowering.graph.value(name).const is None:
            free.setdefault(name)
    args = Namespace(RESERVED)
    arg_names = {v: args.claim(v, fallback="input") for v in list(formal) + list(free)}
    lines = emit_body(statements, parts, arg_names, sub.outputs)
    base = sanitize(ctx.name).lower() or ctx.op_type.lower()
    name, k = f"{base}_{suffix}", 1
    while name in parts.helpers or name in RESERVED:
        k += 1
        name = f"{base}_{suffix}{k}"
    signature = ", ".join(["self"] + list(arg_names.values()))
    ctx.helper(name, f"def {name}({signature}):\n" + "".join(f"    {line}\n" for line in lines))
    return name, list(free)


def _static_value(graph: Graph, name: str, producers: dict, depth: int = 0):
    """``name``'s value when the static sizes alone settle it (Shape -> Gather -> Equal chains), else None.

    Sizes that vary are None in an object array; a result still holding None is not settled."""
    value = graph.value(name)
    if value.const is not None:
        return value.const
    node = producers.get(name)
    if node is None or depth > 32 or node.domain:
        return None
    if node.op_type == "Shape":
        shape = graph.value(node.inputs[0]).shape
        if shape is None:
            return None
        dims = [d if isinstance(d, int) else None for d in shape]
        return np.array(dims[node.attrs.get("start", 0): node.attrs.get("end", len(dims))], dtype=object)
    if node.op_type == "Size":
        shape = graph.value(node.inputs[0]).shape
        return np.array(int(np.prod(shape))) if shape and all(isinstance(d, int) for d in shape) else None
    args = [_static_value(graph, i, producers, depth + 1) if i else None for i in node.inputs]
    if any(a is None for a in args) or node.op_type not in STATIC_OPS or node.proto is None:
        return None
    try:
        out = np.asarray(STATIC_OPS[node.op_type](node.proto, *args))
    except Exception:  # None met arithmetic: not settled
        return None
    return None if out.dtype == object and any(v is None for v in out.reshape(-1)) else out


def _drop_dead_check(ctx, name: str) -> None:
    """Remove the statements that computed a settled condition and feed nothing else."""
    graph, parts = ctx._lowering.graph, ctx._lowering.parts
    if ctx.node not in graph.nodes:
        return
    users, producers = graph.consumers(), graph.producer_of()
    pending = [name]
    while pending:
        value = pending.pop()
        node = producers.get(value)
        if node is None or value in graph.outputs or any(u is not ctx.node for u in users.get(value, [])) \
                or len([o for o in node.outputs if o]) != 1:
            continue
        before = len(parts.statements)
        parts.statements[:] = [st for st in parts.statements if st.node is not node]
        if len(parts.statements) < before:
            users = {k: [u for u in v if u is not node] for k, v in users.items()}
            pending.extend(i for i in node.inputs if i)


def _call(ctx, name: str, args: list[str]) -> str:
    return f"{name}({', '.join(['self'] + [ctx._lowering.reference(a) for a in args])})"


@register_op("If", since=1)
def if_(ctx):
    renamed = _outer_names(ctx)
    cond = _static_value(ctx._lowering.graph, ctx.node.inputs[0], ctx._lowering.graph.producer_of())
    if cond is not None:  # the exporter's shape check, settled once shapes are known: keep the taken branch
        taken = ctx.attr("then_branch") if bool(cond.reshape(-1)[0]) else ctx.attr("else_branch")
        sub = subgraph(ctx, taken, renamed)
        _drop_dead_check(ctx, ctx.node.inputs[0])
        ctx._lowering.parts.statements.extend(lower_nodes(ctx, sub))
        return [ctx._lowering.reference(o) for o in sub.outputs]
    calls = []
    for key, suffix in (("then_branch", "then"), ("else_branch", "else")):
        sub = subgraph(ctx, ctx.attr(key), renamed)
        name, free = emit_function(ctx, suffix, sub, lower_nodes(ctx, sub), [])
        calls.append(_call(ctx, name, free))
    expr = f"{calls[0]} if bool({ctx.x(0)}) else {calls[1]}"
    return Multi(expr) if len(ctx.node.outputs) > 1 else expr


RUN_LOOP = '''
def run_loop(body, module, trip_count, cond, carried, free):
    # ONNX Loop: run the body while the trip count and the condition allow; scan outputs are stacked.
    limit = None if trip_count is None else int(trip_count)
    go = True if cond is None else bool(cond)
    cond = torch.tensor(go) if cond is None else cond
    scans, i = [], 0
    while go and (limit is None or i < limit):
        out = body(module, torch.tensor(i, dtype=torch.int64), cond, *carried, *free)
        out = out if isinstance(out, tuple) else (out,)
        cond, carried = out[0], list(out[1:1 + len(carried)])
        scans.append(out[1 + len(carried):])
        go, i = bool(cond), i + 1
    return (*carried, *[torch.stack(s) for s in zip(*scans)])
'''


@register_op("Loop", since=1)
def loop(ctx):
    renamed = _outer_names(ctx)
    explicit = len(ctx.node.proto.input)
    sub = subgraph(ctx, ctx.attr("body"), renamed)
    name, free = emit_function(ctx, "body", sub, lower_nodes(ctx, sub), sub.inputs)
    runner = ctx.helper("run_loop", RUN_LOOP)
    trip = ctx.x(0) if ctx.has_input(0) else "None"
    cond = ctx.x(1) if explicit > 1 and ctx.has_input(1) else "None"
    carried = ", ".join(ctx.x(i) for i in range(2, explicit))
    free_refs = ", ".join(ctx._lowering.reference(v) for v in free)
    expr = f"{runner}({name}, self, {trip}, {cond}, [{carried}], [{free_refs}])"
    return Multi(expr) if len(ctx.node.outputs) > 1 else f"{expr}[0]"


RUN_SCAN = '''
def run_scan(body, module, states, inputs, free, in_axes, in_reverse, out_axes, out_reverse):
    # ONNX Scan: slice each scan input along its axis, carry the states, stack each scan output.
    steps = inputs[0].shape[in_axes[0]]
    outs = []
    for i in range(steps):
        xs = [x.select(a, steps - 1 - i if rev else i) for x, a, rev in zip(inputs, in_axes, in_reverse)]
        out = body(module, *states, *xs, *free)
        out = out if isinstance(out, tuple) else (out,)
        states, step = list(out[:len(states)]), out[len(states):]
        outs.append(step)
    stacked = []
    for k, a, rev in zip(range(len(out_axes)), out_axes, out_reverse):
        seq = [o[k] for o in outs]
        stacked.append(torch.stack(seq[::-1] if rev else seq, dim=a))
    return (*states, *stacked)
'''


@register_op("Scan", since=9)
def scan(ctx):
    renamed = _outer_names(ctx)
    explicit = len(ctx.node.proto.input)
    n_in = int(ctx.attr("num_scan_inputs"))
    n_state = explicit - n_in
    sub = subgraph(ctx, ctx.attr("body"), renamed)
    n_out = len(sub.outputs) - n_state

    def axes(name: str, count: int, rank_of) -> list[int]:
        return [a if a >= 0 else a % rank_of(i) for i, a in enumerate(ctx.attr(name) or [0] * count)]

    def out_rank(i: int) -> int:
        shape = ctx.out_shape(n_state + i)
        if shape is None:
            raise Unsupported("a negative scan output axis on an output of unknown rank")
        return len(shape)

    in_axes = axes("scan_input_axes", n_in, lambda i: ctx.rank(n_state + i))
    out_axes = axes("scan_output_axes", n_out, out_rank)
    in_rev = [bool(d) for d in (ctx.attr("scan_input_directions") or [0] * n_in)]
    out_rev = [bool(d) for d in (ctx.attr("scan_output_directions") or [0] * n_out)]
    name, free = emit_function(ctx, "body", sub, lower_nodes(ctx, sub), sub.inputs)
    runner = ctx.helper("run_scan", RUN_SCAN)
    states = ", ".join(ctx.x(i) for i in range(n_state))
    inputs = ", ".join(ctx.x(i) for i in range(n_state, explicit))
    free_refs = ", ".join(ctx._lowering.reference(v) for v in free)
    expr = (f"{runner}({name}, self, [{states}], [{inputs}], [{free_refs}], {ctx.lit(in_axes)}, {ctx.lit(in_rev)}, "
            f"{ctx.lit(out_axes)}, {ctx.lit(out_rev)})")
    return Multi(expr) if len(ctx.node.outputs) > 1 else f"{expr}[0]"


RUN_SCAN8 = '''
def run_scan8(body, module, states, inputs, free, in_reverse, outputs):
    # ONNX Scan before opset 9: every state and input starts with a batch axis; each sample is scanned alone.
    samples = [run_scan(body, module, [s[b] for s in states], [x[b] for x in inputs], free, [0] * len(inputs),
                        in_reverse, [0] * outputs, [False] * outputs) for b in range(inputs[0].shape[0])]
    return tuple(torch.stack(column) for column in zip(*samples))
'''


@register_op("Scan", since=8)
def scan8(ctx):
    explicit = len(ctx.node.proto.input)
    if ctx.has_input(0):
        raise Unsupported("Scan (opset 8) with sequence_lens")
    n_in = int(ctx.attr("num_scan_inputs"))
    n_state = explicit - 1 - n_in
    if n_in < 1 or n_state < 0:
        raise ConversionError(f"{ctx._lowering.graph.where(ctx.node)}: attribute num_scan_inputs={n_in} does not "
                              f"fit its {explicit - 1} inputs")
    sub = subgraph(ctx, ctx.attr("body"), _outer_names(ctx))
    in_rev = [bool(d) for d in (ctx.attr("directions") or [0] * n_in)]
    name, free = emit_function(ctx, "body", sub, lower_nodes(ctx, sub), sub.inputs)
    ctx.helper("run_scan", RUN_SCAN)
    runner = ctx.helper("run_scan8", RUN_SCAN8)
    states = ", ".join(ctx.x(i) for i in range(1, 1 + n_state))
    inputs = ", ".join(ctx.x(i) for i in range(1 + n_state, explicit))
    free_refs = ", ".join(ctx._lowering.reference(v) for v in free)
    expr = (f"{runner}({name}, self, [{states}], [{inputs}], [{free_refs}], {ctx.lit(in_rev)}, "
            f"{len(sub.outputs) - n_state})")
    return Multi(expr) if len(ctx.node.outputs) > 1 else f"{expr}[0]"
