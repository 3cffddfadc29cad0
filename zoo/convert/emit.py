"""Stage 5: assemble the module's source from lowered layers and statements.

Local variables are recycled like registers (``x``, ``y``, ``z``, ...) so a tensor is released as soon as
it is dead, and a value used once by the very next statement is written inline, as a person would.
"""
from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass

from .errors import ConversionError
from .ir import Graph
from .lower import TOKEN, ModuleParts, Statement
from .naming import is_safe_identifier
from .tree import is_key, is_path, ref

INLINE_MAX = 72
INLINE_DEPTH = 3
LOCAL_NAMES = ["x", "y", "z", "w", "v", "u"]
# String literals handlers may put into generated code, besides identifiers.
ALLOWED_STRINGS = {"constant", "reflect", "replicate", "circular", "nearest", "linear", "bilinear", "bicubic",
                   "trilinear", "floor", "trunc", "tanh", "none", "mean", "sum", "zeros", "border", "reflection",
                   "-inf", "inf", "nan", "", "nearest-exact", "area", "prod", "amax", "amin", "trunc", "replicate",
                   # run-time errors of our own helpers
                   "Pad: mode reflect needs an axis longer than its pads"}
# Einsum equations: letters, commas, '->' and '...', nothing else.
_EINSUM = re.compile(r"[A-Za-z.,\->]+")


@dataclass
class Header:
    source_name: str
    sha256: str
    opset: int
    producer: str
    regenerate: str
    version: str
    inputs: str = ""  # 'x is the ONNX input <name>' for each argument named otherwise than its input


def _call_depth(expr: str) -> int:
    def depth(node: ast.AST) -> int:
        inner = max((depth(child) for child in ast.iter_child_nodes(node)), default=0)
        return inner + isinstance(node, ast.Call)

    try:
        return depth(ast.parse(expr, mode="eval"))
    except SyntaxError:
        return 99


def _tidy(expr: str) -> str:
    """Canonical spelling; drops the parentheses inlining added where they are not needed."""
    return ast.unparse(ast.parse(expr, mode="eval"))


def _is_atomic(expr: str) -> bool:
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return False
    if isinstance(tree, ast.Constant):
        return not isinstance(tree.value, (int, float)) or tree.value >= 0
    return isinstance(tree, (ast.Call, ast.Name, ast.Attribute, ast.Subscript, ast.List, ast.Tuple))


class _Locals:
    def __init__(self, args: list[str]):
        self.args = set(args)
        self.bound: dict[str, str] = {}  # variable -> value it holds

    def free_name(self, is_live) -> str:
        """The first local name whose value is dead (or that was never used)."""
        busy = {var for var, value in self.bound.items() if is_live(value)}
        for name in itertools.chain(LOCAL_NAMES, (f"t{i}" for i in itertools.count(len(LOCAL_NAMES)))):
            if name not in busy and name not in self.args:
                return name


@dataclass
class Method:
    name: str
    args: dict[str, str]  # ONNX value -> argument name
    n_outputs: int
    body: list[str]


def emit_body(stmts: list[Statement], parts: ModuleParts, arg_names: dict[str, str], results: list[str],
              weighted: set[str] | None = None) -> list[str]:
    """The lines of a method computing ``results`` from ``arg_names`` with ``stmts``.

    ``weighted`` names the calls (``self.conv(``) of layers with weights, when not those of ``parts``."""
    token_of = {v: f"\x00{i}\x00" for i, v in enumerate(parts.token_values)}
    outputs = set(results)
    # A layer with weights starts a new line unless its input is simple, so "conv + activation" pairs stay together.
    if weighted is None:
        weighted = {f"self.{key.split('.')[0]}(" for key in parts.tensors}
    weighted = tuple(sorted(weighted))

    uses: dict[str, int] = {}
    last_use: dict[str, int] = {}
    for i, st in enumerate(stmts):
        for m in TOKEN.finditer(st.expr):
            v = parts.token_values[int(m.group(1))]
            uses[v] = uses.get(v, 0) + 1
            last_use[v] = i
    for v in outputs:
        last_use[v] = len(stmts)

    names: dict[str, str] = dict(arg_names)
    pending: dict[str, str] = {}
    # An argument named like a local ('x') is reused once dead, as torchvision writes `x = self.conv1(x)`.
    local = _Locals([name for name in arg_names.values() if name not in LOCAL_NAMES])
    local.bound.update({name: v for v, name in arg_names.items() if name in LOCAL_NAMES})
    lines: list[str] = []

    def render(expr: str) -> str:
        def sub(m):
            v = parts.token_values[int(m.group(1))]
            if v in pending:
                text = pending.pop(v)
                return text if _is_atomic(text) else f"({text})"
            return names[v]

        return TOKEN.sub(sub, expr)

    for i, st in enumerate(stmts):
        text = render(st.expr)
        out = st.outputs[0] if len(st.outputs) == 1 else None
        nxt = stmts[i + 1].expr if i + 1 < len(stmts) else ""
        if (out is not None and not st.multi and out not in outputs and uses.get(out) == 1
                and out in token_of and token_of[out] in nxt and len(text) <= INLINE_MAX
                and _call_depth(text) < (2 if nxt.startswith(weighted) else INLINE_DEPTH)):
            pending[out] = text
            continue
        if i == len(stmts) - 1 and st.outputs == results and not st.multi:
            lines.append(f"return {_tidy(text)}")
            return lines
        targets = []
        dying = [names[v] for v in _token_values(st.expr, parts) if last_use.get(v) == i and v in names
                 and (v not in arg_names or arg_names[v] in LOCAL_NAMES)]
        for o in st.outputs:
            if o is None:
                targets.append("_")
                continue
            var = next((d for d in dying if d not in targets), None) or local.free_name(
                lambda v, _i=i, _outs=st.outputs: last_use.get(v, -1) > _i or v in _outs)
            local.bound[var] = o
            names[o] = var
            targets.append(var)
        lines.append(f"{', '.join(targets)} = {_tidy(text)}")

    returns = []
    for o in results:
        returns.append(names[o] if o in names else render(_reference(parts, o)))
    lines.append("return " + ", ".join(returns))
    return lines


def _token_values(expr: str, parts: ModuleParts) -> list[str]:
    seen: list[str] = []
    for m in TOKEN.finditer(expr):
        v = parts.token_values[int(m.group(1))]
        if v not in seen:
            seen.append(v)
    return seen


def _reference(parts: ModuleParts, value: str) -> str:
    return parts.tokens.get(value, "")


def split_at_layer(graph: Graph, parts: ModuleParts, layer: str) -> tuple[str, list[Statement], list[Statement]]:
    """(features value, statements computing it, statements of the head) for the input of ``self.<layer>``.

    ``layer`` may be a module path ('classifier.1') where the module tree of an export was restored."""
    call = f"self.{ref(layer.split('.'))}(" if is_path(layer) else f"self.{layer}("
    restored = "." in layer and any(call in st.expr for st in parts.statements)
    if layer not in {l.attr for l in parts.layers} and not restored:
        names = ", ".join(l.attr for l in parts.layers if "(" in l.ctor)
        raise ConversionError(f"{graph.where()}: no layer {layer!r} to split the head at (layers: {names})")
    users = [st for st in parts.statements if call in st.expr]
    match = TOKEN.match(users[0].expr[users[0].expr.index(call) + len(call):]) if len(users) == 1 else None
    if match is None or len(graph.outputs) != 1:
        raise ConversionError(f"{graph.where()}: layer {layer!r} is not a single call on a tensor of a "
                              "single-output graph; cannot split features from head")
    features = parts.token_values[int(match.group(1))]
    downstream = {features}
    head = []
    for st in parts.statements:
        if any(v in downstream for v in _token_values(st.expr, parts)):
            head.append(st)
            downstream.update(o for o in st.outputs if o)
    body = [st for st in parts.statements if st not in head]
    needed = {v for st in head for v in _token_values(st.expr, parts)} - {o for st in head for o in st.outputs if o}
    if needed - {features} or graph.outputs[0] not in downstream:
        raise ConversionError(f"{graph.where()}: the head after {layer!r} reads other tensors than its input")
    return features, body, head


def emit_module(graph: Graph, parts: ModuleParts, cls: str, header: Header, methods: list[Method]) -> str:
    init = "".join(f"        self.{layer.attr} = {layer.ctor}\n" for layer in parts.layers)
    blocks = []
    for m in methods:
        args = ", ".join(f"{name}: torch.Tensor" for name in m.args.values())
        ret = "torch.Tensor" if m.n_outputs == 1 else "tuple[" + ", ".join(["torch.Tensor"] * m.n_outputs) + "]"
        body = "\n".join(f"        {line}" for line in m.body)
        blocks.append(f"    def {m.name}(self, {args}) -> {ret}:\n{body}\n")
    helpers = "".join("\n\n" + src for src in parts.helpers.values())
    helpers += "".join("\n\n" + src for src in parts.classes.values())
    code = init + "".join(blocks) + helpers
    source = (
        f"# Generated by zoo.convert {header.version} from {header.source_name}\n"
        f"#   sha256 {header.sha256} · opset {header.opset} · producer {header.producer or 'unknown'}\n"
        + (f"#   {header.inputs}\n" if header.inputs else "")
        + f"# Do not edit by hand: regenerate with `{header.regenerate}`.\n"
        "import torch\n"
        "from torch import nn\n"
        + ("from torch.nn import functional as F\n" if "F." in code else "")
        + helpers
        + "\n\n"
        f"class {cls}(nn.Module):\n"
        f"    def __init__(self) -> None:\n"
        f"        super().__init__()\n"
        f"{init}\n"
        + "\n".join(blocks)
    )
    check_source(source, graph)
    return source


def check_source(source: str, graph: Graph) -> None:
    """Belt and braces: generated code holds only identifiers, numbers, known words and module keys such as
    'block1-0' (letters, digits, underscores and hyphens)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConversionError(f"{graph.where()}: generated code does not parse ({exc}); please report this") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if not (is_safe_identifier(node.value) or is_key(node.value) or node.value in ALLOWED_STRINGS
                    or _EINSUM.fullmatch(node.value)):
                raise ConversionError(f"{graph.where()}: refusing to emit string literal {node.value!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            raise ConversionError(f"{graph.where()}: refusing to emit a bytes literal")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if not all(m == "torch" or m.startswith("torch.") for m in mods):
                raise ConversionError(f"{graph.where()}: refusing to emit an import of {mods}")
