"""Exported module hierarchies: layers whose names are module paths ('layer1.0.conv1', 'features.0.1')
go back into nested containers, so the module's state_dict keys are the original model's.

A container whose children are numbered is an ``nn.Sequential`` (with ``nn.Identity()`` where the original
held a layer without weights that the graph does not keep as a layer, such as a ReLU); any other container
is an ``nn.ModuleDict``, whose children read as attributes; one holding only parameters (a LayerNorm
written out as arithmetic) is an ``nn.ParameterDict``. A run of statements that calls every child of a
Sequential in turn becomes one call of the container, as the original's forward would be written.
"""
from __future__ import annotations

import re

from .lower import TOKEN, Layer, ModuleParts, Statement
from .naming import is_safe_identifier

LINE = 110
_SELF = re.compile(r"self\.(\w+)")


class Conflict(Exception):
    """The paths do not form a tree (a layer and a container with one name)."""


# A module name that is not an identifier but is safe inside a string literal ('block1-0' in torchvision's
# RegNet): it lives in an nn.ModuleDict and is reached by key, so the state_dict keys stay the original's.
_KEY = re.compile(r"[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)+")


def is_key(part: str) -> bool:
    return _KEY.fullmatch(part) is not None


def is_path(text: str) -> bool:
    parts = text.split(".")
    return bool(text) and is_safe_identifier(parts[0]) and not parts[0].isdigit() \
        and all(p.isdigit() or is_safe_identifier(p) or is_key(p) for p in parts)


def ref(path: list[str]) -> str:
    """'features', '0', 'conv' -> 'features[0].conv'; 'block1', 'block1-0' -> 'block1["block1-0"]' (how
    forward reaches the layer)."""
    return path[0] + "".join(f"[{p}]" if p.isdigit() else f'["{p}"]' if is_key(p) else f".{p}" for p in path[1:])


def nest(entries: list[tuple[list[str], str]], indent: int) -> list[tuple[str, str]]:
    """(name, constructor) of the top level, deeper paths gathered into containers, first use first."""
    groups: dict[str, list[tuple[list[str], str]]] = {}
    for path, ctor in entries:
        groups.setdefault(path[0], []).append((path[1:], ctor))
    out = []
    for name, items in groups.items():
        if any(not rest for rest, _ in items):
            if len(items) > 1:
                raise Conflict(name)
            out.append((name, items[0][1]))
        else:
            out.append((name, container(nest(items, indent + 4), indent)))
    return out


def container(children: list[tuple[str, str]], indent: int) -> str:
    params = [ctor.startswith("nn.Parameter(") for _, ctor in children]
    if any(params) and not (all(params) and not any(name.isdigit() for name, _ in children)):
        raise Conflict("parameters beside modules")  # no container expression holds both
    if all(params):
        items = [f'"{name}": {ctor}' for name, ctor in children]
        head, tail = "nn.ParameterDict({", "})"
    elif all(name.isdigit() for name, _ in children):
        by_index = {int(name): ctor for name, ctor in children}
        items = [by_index.get(i, "nn.Identity()") for i in range(max(by_index) + 1)]
        head, tail = "nn.Sequential(", ")"
    elif any(name.isdigit() for name, _ in children):
        raise Conflict("numbered and named children in one container")  # a ModuleDict key must be a name
    else:
        items = [f'"{name}": {ctor}' for name, ctor in children]
        head, tail = "nn.ModuleDict({", "})"
    flat = head + ", ".join(items) + tail
    if len(flat) + indent <= LINE and "\n" not in flat:
        return flat
    pad = " " * (indent + 4)
    return head + "\n" + "".join(f"{pad}{item},\n" for item in items) + " " * indent + tail


def restore(parts: ModuleParts, paths: dict[str, list[str]]) -> ModuleParts:
    """``parts`` with each layer in ``paths`` moved to its path; unchanged if the paths clash."""
    others = {layer.attr for layer in parts.layers if layer.attr not in paths}
    entries = [(paths[layer.attr], layer.ctor) for layer in parts.layers if layer.attr in paths]
    try:
        top = dict(nest(entries, 8))
    except Conflict:
        return parts
    if others & set(top):
        return parts
    layers, placed = [], set()
    for layer in parts.layers:
        if layer.attr not in paths:
            layers.append(layer)
        elif paths[layer.attr][0] not in placed:
            name = paths[layer.attr][0]
            placed.add(name)
            layers.append(Layer(name, top[name], name))

    def sub(m):
        return "self." + (ref(paths[m.group(1)]) if m.group(1) in paths else m.group(1))

    statements = [Statement(st.node, st.outputs, _SELF.sub(sub, st.expr), st.multi) for st in parts.statements]
    tensors = {}
    for key, array in parts.tensors.items():
        head, _, rest = key.partition(".")
        tensors[".".join(paths[head]) + (f".{rest}" if rest else "") if head in paths else key] = array
    restored = ModuleParts(layers, statements, tensors, parts.token_values, parts.tokens, parts.helpers,
                           parts.classes)
    _collapse(restored, list(paths.values()))
    return restored


def _collapse(parts: ModuleParts, paths: list[list[str]]) -> None:
    """Calls of every child of a Sequential, one after the other, become one call of the Sequential."""
    by_parent: dict[tuple[str, ...], set[int]] = {}
    for path in paths:
        if len(path) >= 2 and path[-1].isdigit():
            by_parent.setdefault(tuple(path[:-1]), set()).add(int(path[-1]))
    uses: dict[str, int] = {}
    for st in parts.statements:
        for m in TOKEN.finditer(st.expr):
            v = parts.token_values[int(m.group(1))]
            uses[v] = uses.get(v, 0) + 1
    for parent, indices in by_parent.items():
        if indices != set(range(len(indices))) or any(len(p) > len(parent) + 1 and tuple(p[:len(parent)]) == parent
                                                      for p in paths):
            continue
        calls = [f"self.{ref([*parent, str(i)])}(" for i in range(len(indices))]
        stmts = parts.statements
        for start, st in enumerate(stmts):
            if not st.expr.startswith(calls[0]):
                continue
            run = stmts[start:start + len(calls)]
            if len(run) == len(calls) and all(_is_call(s.expr, c) for s, c in zip(run, calls)) and all(
                    _reads(parts, b) == [a.outputs[0]] and uses.get(a.outputs[0]) == 1 for a, b in zip(run, run[1:])):
                arg = st.expr[len(calls[0]):-1]
                parts.statements[start:start + len(calls)] = [
                    Statement(st.node, run[-1].outputs, f"self.{ref(list(parent))}({arg})")]
            break


def _is_call(expr: str, call: str) -> bool:
    return expr.startswith(call) and expr.endswith(")") and TOKEN.fullmatch(expr[len(call):-1]) is not None


def _reads(parts: ModuleParts, st: Statement) -> list[str]:
    return [parts.token_values[int(m.group(1))] for m in TOKEN.finditer(st.expr)]
