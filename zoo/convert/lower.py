"""Stage 4: lower each node through its handler into layers (for ``__init__``) and expressions (for ``forward``).

Handlers see a :class:`NodeContext`. They declare layers with :meth:`NodeContext.layer`, refer to input
tensors with :meth:`NodeContext.x`, format numbers with :meth:`NodeContext.lit`, and return the forward
expression of the node's output (a string), one expression per output (a list), or a :class:`Multi`
whose expression evaluates to a tuple of all outputs.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import ConversionError, Unsupported
from .ir import Graph, Node, Value
from .naming import Namespace, common_prefix, looks_generated, sanitize, strip_role, torch_scope_name
from .registry import find_handler

TOKEN = re.compile("\x00(\\d+)\x00")

TORCH_DTYPES = {
    "float32": "torch.float32", "float64": "torch.float64", "float16": "torch.float16",
    "int8": "torch.int8", "int16": "torch.int16", "int32": "torch.int32", "int64": "torch.int64",
    "uint8": "torch.uint8", "uint16": "torch.uint16", "uint32": "torch.uint32", "uint64": "torch.uint64",
    "bool": "torch.bool", "complex64": "torch.complex64", "complex128": "torch.complex128",
    "bfloat16": "torch.bfloat16", "float8_e4m3fn": "torch.float8_e4m3fn", "float8_e5m2": "torch.float8_e5m2",
    "float8_e4m3fnuz": "torch.float8_e4m3fnuz", "float8_e5m2fnuz": "torch.float8_e5m2fnuz",
}


@dataclass(frozen=True)
class Multi:
    """A handler's expression that evaluates to a tuple holding every output of the node."""

    expr: str


@dataclass
class Statement:
    node: Node
    outputs: list[str | None]
    expr: str
    multi: bool = False


@dataclass
class Layer:
    attr: str
    ctor: str
    hint: str = ""  # the name it was given in the file, before sanitizing (block discovery reads its parts)


@dataclass
class ModuleParts:
    layers: list[Layer] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    token_values: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    helpers: dict[str, str] = field(default_factory=dict)  # module-level functions some ops need
    classes: dict[str, str] = field(default_factory=dict)  # block classes found by zoo.convert.blocks


def torch_dtype(dtype: np.dtype | None) -> str:
    if dtype is None or np.dtype(dtype).name not in TORCH_DTYPES:
        raise Unsupported(f"dtype {dtype} has no PyTorch equivalent")
    return TORCH_DTYPES[np.dtype(dtype).name]


def lit(value: Any) -> str:
    """Python source for a number, bool, None or a (nested) tuple/list of them. Strings are refused."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return repr(None if value is None else bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return "float('nan')"
        if math.isinf(f):
            return "float('inf')" if f > 0 else "-float('inf')"
        if isinstance(value, np.float32):  # the shortest decimal that reads back as the same float32
            f = next(float(t) for t in (f"{f:.{d}g}" for d in range(1, 10)) if np.float32(float(t)) == value)
        return repr(f)
    if isinstance(value, np.ndarray):
        return lit(value.tolist())
    if isinstance(value, tuple):
        inner = ", ".join(lit(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(lit(v) for v in value) + "]"
    raise TypeError(f"refusing to put {type(value).__name__} into generated source")


class NodeContext:
    """What a handler sees of one node."""

    def __init__(self, lowering: "Lowering", node: Node):
        self._lowering = lowering
        self._graph = lowering.graph
        self.node = node
        self.op_type = node.op_type
        self.domain = node.domain
        self.name = node.name
        self.opset = node.opset

    # -- reading the node ---------------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)

    @property
    def num_inputs(self) -> int:
        return len(self.node.inputs)

    def has_input(self, i: int) -> bool:
        return i < len(self.node.inputs) and bool(self.node.inputs[i])

    def value(self, i: int) -> Value:
        return self._graph.value(self.node.inputs[i])

    def out_value(self, i: int = 0) -> Value:
        return self._graph.value(self.node.outputs[i])

    def shape(self, i: int) -> tuple | None:
        v = self.value(i)
        return tuple(v.const.shape) if v.const is not None else v.shape

    def out_shape(self, i: int = 0) -> tuple | None:
        return self.out_value(i).shape

    def rank(self, i: int) -> int:
        r = self.value(i).rank
        if r is None:
            raise Unsupported(f"the rank of input {i} is unknown (shape inference could not tell)")
        return r

    def dtype(self, i: int) -> np.dtype | None:
        v = self.value(i)
        return v.const.dtype if v.const is not None else v.dtype

    def out_dtype(self, i: int = 0) -> np.dtype | None:
        return self.out_value(i).dtype

    def const(self, i: int) -> np.ndarray | None:
        return self.value(i).const if self.has_input(i) else None

    def require_const(self, i: int, what: str) -> np.ndarray:
        c = self.const(i)
        if c is None:
            raise Unsupported(f"{what} (input {i}) must be a constant")
        return c

    def output_used(self, i: int) -> bool:
        return i < len(self.node.outputs) and self.node.outputs[i] in self._lowering.used

    # -- writing code -------------------------------------------------------------------------------
    lit = staticmethod(lit)
    torch_dtype = staticmethod(torch_dtype)

    def x(self, i: int) -> str:
        """The forward expression of input ``i``; a constant becomes a parameter or buffer of the module."""
        if not self.has_input(i):
            raise Unsupported(f"input {i} is missing")
        return self._lowering.reference(self.node.inputs[i])

    def int_list(self, i: int) -> str:
        """Input ``i`` as a list of ints in the source: a literal when constant, ``.tolist()`` at run time."""
        c = self.const(i)
        if c is not None:
            return lit([int(v) for v in np.asarray(c).reshape(-1)])
        return f"{self.x(i)}.tolist()"

    def operand(self, i: int, *, like: int | None = None) -> str:
        """Like :meth:`x`, but a one-element constant that does not change the broadcast shape
        becomes a number literal (``x * 0.5``)."""
        c = self.const(i)
        if c is not None and c.size == 1 and c.dtype.kind in "fiub":
            other_rank = self.value(like).rank if like is not None and self.has_input(like) else None
            if c.ndim == 0 or (other_rank is not None and other_rank >= c.ndim):
                return lit(c.reshape(()).item() if c.dtype.kind != "f" else c.reshape(())[()])
        return self.x(i)

    def helper(self, name: str, source: str) -> str:
        """Put a module-level function (trusted source from an op family) into the generated file once."""
        self._lowering.parts.helpers.setdefault(name, source.strip() + "\n")
        return name

    def layer(self, ctor: str, *, hint: str | None = None, **tensors: np.ndarray) -> str:
        """Declare ``self.<name> = <ctor>`` with the given state tensors; returns ``self.<name>``."""
        return self._lowering.declare_layer(self.node, ctor, hint, tensors)


class Lowering:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.parts = ModuleParts()
        self.attrs = Namespace()
        self.layer_of: dict[str, str] = {}  # output value -> the layer computing it (for `layers()`)
        self.used: set[str] = {n for node in graph.nodes for n in node.inputs if n} | set(graph.outputs)
        params = [v.name for v in graph.values.values() if v.const is not None and v.const.dtype.kind == "f"]
        self._param_prefix = common_prefix(params)

    # names ----------------------------------------------------------------------------------------
    def _layer_hint(self, node: Node) -> str:
        params = [n for n in node.inputs if n and self.graph.value(n).const is not None
                  and self.graph.value(n).const.dtype.kind == "f" and not looks_generated(n)]
        if params:
            stripped = [p[len(self._param_prefix):] if p.startswith(self._param_prefix) else p for p in params]
            base = strip_role(os.path.commonprefix(stripped)) if len(stripped) > 1 else strip_role(stripped[0])
            if sanitize(base):
                return base
        return self._given_name(node) or node.op_type.lower()

    @staticmethod
    def _given_name(node: Node) -> str:
        """A name the file gives a node: its exporter scope as a module path ('features.2'), its own name,
        or its output's ('pool5_7x7_s1'), unless it is a counter ('n12', 'MaxPool_3')."""
        if node.name.startswith("/"):
            scoped = torch_scope_name(node.name, node.op_type, sep=".")
            if sanitize(scoped):
                return scoped
        for name in (node.name, *node.outputs[:1]):
            if name and not looks_generated(name):
                return name
        return ""

    def declare_layer(self, node: Node, ctor: str, hint: str | None, tensors: dict[str, np.ndarray]) -> str:
        floats = {np.asarray(a).dtype for a in tensors.values() if np.asarray(a).dtype.kind == "f"}
        if len(floats) == 1 and floats != {np.dtype(np.float32)} and ctor.endswith(")"):
            # a float16 graph's layers stay float16 (torch builds float32 layers, and would cast the weights)
            ctor = f"{ctor[:-1]}{'' if ctor.endswith('()') else ', '}dtype={torch_dtype(floats.pop())})"
        wanted = (hint and self._given_name(node)) or hint or self._layer_hint(node)
        attr = self.attrs.claim(wanted, fallback=node.op_type.lower())
        self.parts.layers.append(Layer(attr, ctor, wanted))
        self.layer_of.update({out: attr for out in node.outputs if out})
        for key, array in tensors.items():
            self.parts.tensors[f"{attr}.{key}"] = np.asarray(array, order="C")  # no copy: torch reads it once
        return f"self.{attr}"

    def reference(self, value_name: str) -> str:
        if value_name in self.parts.tokens:
            return self.parts.tokens[value_name]
        value = self.graph.value(value_name)
        if value.const is not None:
            ref = self._materialize(value)
        else:
            ref = f"\x00{len(self.parts.token_values)}\x00"
            self.parts.token_values.append(value_name)
        self.parts.tokens[value_name] = ref
        return ref

    def _materialize(self, value: Value) -> str:
        array = value.const
        wanted = value.name[len(self._param_prefix):] if not looks_generated(value.name) else "const"
        attr = self.attrs.claim(wanted, fallback="const")
        dtype = torch_dtype(array.dtype)
        shape = lit(tuple(array.shape))
        if array.dtype.kind == "f":
            ctor = f"nn.Parameter(torch.empty({shape}, dtype={dtype}))"
        else:
            ctor = f"nn.Buffer(torch.empty({shape}, dtype={dtype}))"
        self.parts.layers.append(Layer(attr, ctor, wanted))
        self.parts.tensors[attr] = np.asarray(array, order="C")
        return f"self.{attr}"

    # lowering ---------------------------------------------------------------------------------------
    def run(self) -> ModuleParts:
        self._check_supported()
        for node in self.graph.nodes:
            ctx = NodeContext(self, node)
            handler = find_handler(node.domain, node.op_type, node.opset)
            try:
                result = handler(ctx)
            except Unsupported as exc:
                raise ConversionError(f"{self.graph.where(node)}: {exc}") from None
            except ConversionError:
                raise
            except Exception as exc:
                raise ConversionError(f"{self.graph.where(node)}: handler failed: {type(exc).__name__}: {exc}") from exc
            self._add_statements(node, result)
        return self.parts

    def _add_statements(self, node: Node, result: object) -> None:
        used = [o if o in self.used else None for o in node.outputs]
        if isinstance(result, Multi):
            self.parts.statements.append(Statement(node, used, result.expr, multi=len(node.outputs) > 1))
            return
        exprs: Sequence[str | None] = [result] if isinstance(result, str) else list(result)  # type: ignore[arg-type]
        for i, out in enumerate(used):
            if out is None:
                continue
            if i >= len(exprs) or exprs[i] is None:
                raise ConversionError(f"{self.graph.where(node)}: output {i} is used but not supported")
            self.parts.statements.append(Statement(node, [out], exprs[i]))

    def _check_supported(self) -> None:
        missing: dict[tuple[str, str, int], list[str]] = {}
        for node in self.graph.nodes:
            if find_handler(node.domain, node.op_type, node.opset) is None:
                key = (node.domain or "ai.onnx", node.op_type, node.opset)
                missing.setdefault(key, []).append(node.name or node.outputs[0])
        if missing:
            lines = [f"  {op} (domain {dom}, opset {v}): nodes {', '.join(repr(n) for n in names[:5])}"
                     + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                     for (dom, op, v), names in sorted(missing.items())]
            raise ConversionError(f"{self.graph.where()}: unsupported ops:\n" + "\n".join(lines)
                                  + "\nRegister a handler with zoo.convert.register_op to add them.")
