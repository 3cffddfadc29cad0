"""Sequences and optionals. An ONNX sequence is a Python list of tensors in the generated code (a new list
whenever ONNX makes a new sequence, so no input is ever changed in place); an optional is ``None`` or its value.
SequenceMap's body becomes a module-level function, like a Loop body (see control.py).
"""
from __future__ import annotations

from .. import checks
from ..lower import Multi
from ..registry import register_op
from .control import _outer_names, emit_function, lower_nodes, subgraph


@register_op("SequenceEmpty", since=11)
def sequence_empty(ctx):
    return "[]"


@register_op("SequenceConstruct", since=11)
def sequence_construct(ctx):
    return "[" + ", ".join(ctx.x(i) for i in range(ctx.num_inputs)) + "]"


SEQUENCE_INSERT = '''
def sequence_insert(sequence, tensor, position):
    # ONNX SequenceInsert: a negative position counts from the back.
    at = int(position)
    at = at + len(sequence) if at < 0 else at
    return sequence[:at] + [tensor] + sequence[at:]
'''


@register_op("SequenceInsert", since=11)
def sequence_insert(ctx):
    if not ctx.has_input(2):
        return f"[*{ctx.x(0)}, {ctx.x(1)}]"
    return f"{ctx.helper('sequence_insert', SEQUENCE_INSERT)}({ctx.x(0)}, {ctx.x(1)}, {ctx.x(2)})"


@register_op("SequenceAt", since=11)
def sequence_at(ctx):
    return f"{ctx.x(0)}[int({ctx.x(1)})]"


SEQUENCE_ERASE = '''
def sequence_erase(sequence, position):
    # ONNX SequenceErase: a negative position counts from the back.
    at = int(position) % len(sequence)
    return sequence[:at] + sequence[at + 1:]
'''


@register_op("SequenceErase", since=11)
def sequence_erase(ctx):
    if not ctx.has_input(1):
        return f"{ctx.x(0)}[:-1]"
    return f"{ctx.helper('sequence_erase', SEQUENCE_ERASE)}({ctx.x(0)}, {ctx.x(1)})"


@register_op("SequenceLength", since=11)
def sequence_length(ctx):
    return f"torch.tensor(len({ctx.x(0)}))"


@register_op("ConcatFromSequence", since=11)
def concat_from_sequence(ctx):
    if "axis" not in ctx.node.attrs:
        raise checks.Contradiction("attribute axis is required")
    axis = checks.integer(ctx, "axis", 0)
    new_axis = checks.integer(ctx, "new_axis", 0)
    if new_axis not in (0, 1):
        raise checks.Contradiction(f"attribute new_axis={new_axis} must be 0 or 1")
    return f"torch.{'stack' if new_axis else 'cat'}({ctx.x(0)}, dim={axis})"


@register_op("SplitToSequence", since=11)
def split_to_sequence(ctx):
    rank = ctx.rank(0)
    axis = checks.integer(ctx, "axis", 0)
    if not -rank <= axis < rank:
        raise checks.Contradiction(f"attribute axis={axis} is outside [-{rank}, {rank}) for the input's rank")
    x = ctx.x(0)
    if not ctx.has_input(1):
        keep = checks.integer(ctx, "keepdims", 1)
        return f"list({x}.split(1, dim={axis}))" if keep else f"list({x}.unbind({axis}))"
    c = ctx.const(1)
    if c is not None and c.ndim > 1:
        raise checks.Contradiction(f"input split has rank {c.ndim}; it must be a scalar or a list of sizes")
    # A scalar split is a chunk size (the last chunk may be smaller), a vector the sizes: torch's split reads both.
    sizes = (ctx.lit(int(c)) if c.ndim == 0 else ctx.lit([int(v) for v in c])) if c is not None \
        else f"{ctx.x(1)}.tolist()"
    return f"list({x}.split({sizes}, dim={axis}))"


RUN_SEQUENCE_MAP = '''
def run_sequence_map(body, module, inputs, free, outputs):
    # ONNX SequenceMap: the body runs on each position of the sequences; a tensor input goes to every run.
    results = [[] for _ in range(outputs)]
    for i in range(len(inputs[0])):
        out = body(module, *[x[i] if isinstance(x, list) else x for x in inputs], *free)
        for k, o in enumerate(out if isinstance(out, tuple) else (out,)):
            results[k].append(o)
    return tuple(results)
'''


@register_op("SequenceMap", since=17)
def sequence_map(ctx):
    renamed = _outer_names(ctx)
    explicit = len(ctx.node.proto.input)
    sub = subgraph(ctx, ctx.attr("body"), renamed)
    if len(sub.inputs) != explicit or len(sub.outputs) != len(ctx.node.outputs):
        raise checks.Contradiction(f"the body takes {len(sub.inputs)} inputs and gives {len(sub.outputs)} outputs; "
                                   f"the node has {explicit} and {len(ctx.node.outputs)}")
    name, free = emit_function(ctx, "body", sub, lower_nodes(ctx, sub), sub.inputs)
    runner = ctx.helper("run_sequence_map", RUN_SEQUENCE_MAP)
    inputs = ", ".join(ctx.x(i) for i in range(explicit))
    free_refs = ", ".join(ctx._lowering.reference(v) for v in free)
    expr = f"{runner}({name}, self, [{inputs}], [{free_refs}], {len(sub.outputs)})"
    return Multi(expr) if len(ctx.node.outputs) > 1 else f"{expr}[0]"


@register_op("Optional", since=15)
def optional(ctx):
    return ctx.x(0) if ctx.has_input(0) else "None"


@register_op("OptionalHasElement", since=15)
def optional_has_element(ctx):
    return f"torch.tensor({ctx.x(0)} is not None)" if ctx.has_input(0) else "torch.tensor(False)"


@register_op("OptionalGetElement", since=15)
def optional_get_element(ctx):
    return ctx.x(0)
