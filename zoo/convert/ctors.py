"""Layer constructors with their numbers taken out: two layers of one kind compare by ``template``, and the
numbers (``values``) that differ between instances of a block become the block's constructor arguments."""
from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass

from .lower import lit

# nn.Conv* keywords whose absence means this value; lets `stride=2` and no stride share a class.
DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True}
_ORDER = ["kernel_size", "stride", "padding", "dilation", "groups", "bias"]


@dataclass
class Ctor:
    """A constructor call with its numbers taken out: ``template`` compares, ``values`` fill the holes."""

    template: str
    values: list
    tree: ast.Call


def parse(text: str) -> Ctor | None:
    try:
        call = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call):
        return None
    present = {kw.arg for kw in call.keywords}
    if ast.unparse(call.func).startswith("nn.Conv"):
        call.keywords += [ast.keyword(k, ast.Constant(v)) for k, v in DEFAULTS.items() if k not in present]
    order = {kw.arg: i for i, kw in enumerate(call.keywords)}
    call.keywords.sort(key=lambda kw: (_ORDER.index(kw.arg) if kw.arg in _ORDER else len(_ORDER), order[kw.arg]))
    values = [_value(n) for n in numbers(call)]
    template = _replace_numbers(call, [f"_hole{i}" for i in range(len(values))])
    return Ctor(ast.dump(template), values, call)


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
        and not isinstance(node.value, bool)


def _value(node: ast.AST):
    return -node.operand.value if isinstance(node, ast.UnaryOp) else node.value


def numbers(node: ast.AST) -> list[ast.AST]:
    """The numbers in a call, depth-first in field order (a negative number is one)."""
    if _is_number(node):
        return [node]
    return [n for child in ast.iter_child_nodes(node) for n in numbers(child)]


def _replace_numbers(call: ast.Call, names: list[str]) -> ast.Call:
    tree = copy.deepcopy(call)
    it = iter(names)

    class Replace(ast.NodeTransformer):
        def visit(self, node):
            return ast.Name(next(it)) if _is_number(node) else self.generic_visit(node)

    return Replace().visit(tree)


def kind(ctor: str) -> str:
    """'nn.Conv2d(3, 64)' -> 'conv': what a layer without a name of its own is called in a block."""
    return re.sub(r"\d*d?$", "", ctor.split("(")[0].split(".")[-1]).lower() or "layer"


def holes_in(node: ast.AST, ctor: Ctor) -> list[int]:
    """Indices of the numbers of ``ctor`` that lie inside ``node``."""
    inside = {id(n) for n in numbers(node)}
    return [i for i, n in enumerate(numbers(ctor.tree)) if id(n) in inside]


def fill(ctor: Ctor, slots: list[str]) -> str:
    """The constructor with its numbers replaced by literals or argument names; default keywords dropped."""
    tree = _replace_numbers(ctor.tree, slots)
    if ast.unparse(tree.func).startswith("nn.Conv"):
        tree.keywords = [kw for kw in tree.keywords if not (
            kw.arg in DEFAULTS and ast.unparse(kw.value) == num(DEFAULTS[kw.arg]))]
    return ast.unparse(tree)


def num(v) -> str:
    return lit(v)


def type_of(column: tuple) -> str:
    return "int" if all(isinstance(v, int) for v in column) else "float"
