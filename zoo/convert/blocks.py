"""Block discovery: finding the subgraphs a network repeats (:mod:`.blockcode` writes them as classes).

Two signals must agree before a class is formed. Names propose instances: layers whose names share a
prefix (``fire2_``, ``res3_1_``, ``layer1.0.``) and whose remaining parts (the roles: ``squeeze1x1``,
``branch2a_bn``, ``conv1``) recur under other prefixes. Structure confirms them: an instance must be one
region of the forward with a single input and a single output, and all instances of a class must compute
the same thing once the numbers in their layers' constructors are abstracted. Numbers that differ between
instances become constructor arguments; numbers that agree stay literals. Names alone would merge blocks
that only look alike; structure alone cannot tell where a block starts in a chain of identical layers.

Where the names propose nothing (they are counters: ShuffleNet's ``gconv1_7``), structure proposes alone:
each stretch of the forward between two points where a single tensor is alive is an instance, its layers
named by kind and order (``conv1``, ``bn1``, ``conv2``, as torchvision names them), and the same test of
sameness decides which of them form a class.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .ctors import Ctor, kind, parse
from .ir import Graph
from .lower import TOKEN, Layer, ModuleParts, lit, torch_dtype
from .naming import RESERVED, Namespace
from .tree import is_path

_SEP = re.compile(r"[._/:]+")
_SELF = re.compile(r"self\.(\w+)")
_KINDS = {"batchnorm": "bn"}  # torchvision's short names, where they differ from the layer's type


def _tokens(hint: str, dotted: bool = False) -> list[str]:
    return hint.split(".") if dotted else [t for t in _SEP.split(hint) if t]


def is_dotted(graph: Graph, parts: ModuleParts) -> bool:
    """PyTorch exports name weights by module path ('layer1.0.conv1.weight'): then the paths are the
    module tree to restore, split at dots only ('conv_dw' is one name)."""
    stateful = {key.split(".")[0] for key in parts.tensors}
    hints = [layer.hint for layer in parts.layers if layer.attr in stateful]
    return graph.producer.lower().startswith("pytorch") and any("." in h for h in hints) \
        and all(is_path(h) for h in hints)


@dataclass
class Instance:
    prefix: tuple[str, ...]
    attrs: list[str]  # its layers, in declaration order
    roles: dict[str, str]  # attr -> role inside the block
    stmts: list[int]  # statement indices, in order
    inp: str = ""
    out: str = ""
    core: int = 0  # how many of stmts run up to its last layer with weights; the rest is its tail
    signature: tuple = ()
    ctors: dict[str, Ctor] = field(default_factory=dict)
    shortcut: Shortcut | None = None

    def attr_of(self, role: str) -> str:
        return next(a for a, r in self.roles.items() if r == role)


@dataclass
class Shortcut:
    """Layers some instances apply to the block's input where the others use the input itself (ResNet's
    projection shortcut): they become optional layers of one class, `None` where absent."""

    roles: list[str]  # the optional layers' roles, in declaration order
    chain: list[int]  # the statements computing the shortcut, input first
    value: str  # what they compute


class Discovery:
    def __init__(self, graph: Graph, parts: ModuleParts, keep: set[str]):
        self.graph, self.parts, self.keep = graph, parts, keep
        self.dotted = is_dotted(graph, parts)
        self.layers = {layer.attr: layer for layer in parts.layers}
        self.stateful = {key.split(".")[0] for key in parts.tensors}
        self.refs = [[a for a in _SELF.findall(st.expr) if a in self.layers] for st in parts.statements]
        self.reads = [[parts.token_values[int(m.group(1))] for m in TOKEN.finditer(st.expr)]
                      for st in parts.statements]
        self.users: dict[str, set[int]] = {}
        for i, values in enumerate(self.reads):
            for v in values:
                self.users.setdefault(v, set()).add(i)
        self.uses_of_attr: dict[str, set[int]] = {}
        for i, attrs in enumerate(self.refs):
            for a in attrs:
                self.uses_of_attr.setdefault(a, set()).add(i)

    # -- instances ------------------------------------------------------------------------------
    def instances(self, depth: int) -> list[Instance]:
        groups: dict[tuple[str, ...], list[str]] = {}
        for layer in self.parts.layers:
            toks = _tokens(layer.hint, self.dotted)
            if layer.attr in self.stateful and len(toks) >= depth and layer.attr in self.uses_of_attr:
                groups.setdefault(tuple(toks[:depth]), []).append(layer.attr)
        found = []
        for prefix, attrs in groups.items():
            joiner = "." if self.dotted else "_"
            roles = {a: joiner.join(_tokens(self.layers[a].hint, self.dotted)[len(prefix):]) for a in attrs}
            inst = self._region(prefix, attrs, roles)
            if inst is not None:
                found.append(inst)
        return found

    def stretches(self) -> list[Instance]:
        """Instances proposed by structure alone: the statements between two points of the forward where a
        single tensor is alive (the input of what follows), with their layers named by kind and order."""
        statements = self.parts.statements
        last_read = {v: i for i, values in enumerate(self.reads) for v in values}
        for v in self.graph.outputs:
            last_read[v] = len(statements)
        alive = {v for v in self.graph.inputs if v in last_read}
        found, start, inp = [], 0, next(iter(alive)) if len(alive) == 1 else None
        for i, st in enumerate(statements):
            alive = {v for v in alive | {o for o in st.outputs if o} if last_read.get(v, -1) > i}
            if len(alive) != 1:
                continue
            stmts, out = list(range(start, i + 1)), next(iter(alive))
            if found and found[-1].stmts[-1] == start - 1 and not any(self.refs[k] for k in stmts):
                found[-1] = self._stretch(found[-1].stmts + stmts, found[-1].inp, out)  # its closing ReLU
            elif inp is not None:
                inst = self._stretch(stmts, inp, out)
                if inst is not None:
                    found.append(inst)
            start, inp = i + 1, out
        return [inst for inst in found if inst is not None]

    def _stretch(self, stmts: list[int], inp: str, out: str) -> Instance | None:
        used = [a for i in stmts for a in self.refs[i]]
        attrs = [layer.attr for layer in self.parts.layers if layer.attr in used]
        if not any(a in self.stateful for a in attrs) or any(not self.uses_of_attr[a] <= set(stmts) for a in attrs):
            return None
        kinds = [_KINDS.get(kind(self.layers[a].ctor), kind(self.layers[a].ctor)) for a in attrs]
        order: dict[str, int] = {}
        roles = {}
        for a, k in zip(attrs, kinds):
            order[k] = order.get(k, 0) + 1
            roles[a] = f"{k}{order[k]}" if kinds.count(k) > 1 else k
        last = max(i for i in stmts if any(a in self.stateful for a in self.refs[i]))
        return Instance((), attrs, roles, stmts, inp=inp, out=out, core=last + 1 - stmts[0])

    def _region(self, prefix, attrs, roles) -> Instance | None:
        own = set(attrs)
        used = sorted(i for a in attrs for i in self.uses_of_attr[a])
        lo, hi = used[0], used[-1]
        stmts = list(range(lo, hi + 1))
        extra: list[str] = []
        for i in stmts:
            for a in self.refs[i]:
                if a in own or a in extra:
                    continue
                if a in self.stateful or not self.uses_of_attr[a] <= set(stmts):
                    return None
                extra.append(a)
        produced = {o for i in stmts for o in self.parts.statements[i].outputs if o}
        inputs = {v for i in stmts for v in self.reads[i]} - produced
        if len(inputs) != 1:
            return None
        # Statements after the last layer that only combine the block's own values belong to it (the
        # concatenation closing a Fire, the residual addition and its ReLU).
        j = hi + 1
        while j < len(self.parts.statements):
            stateless = all(a not in self.stateful and self.uses_of_attr[a] == {j} for a in self.refs[j])
            if not stateless or not set(self.reads[j]) <= produced | inputs:
                break
            stmts.append(j)
            extra += [a for a in self.refs[j] if a not in extra]
            produced.update(o for o in self.parts.statements[j].outputs if o)
            j += 1
        names = Namespace(RESERVED)
        role_of = {}
        if self.dotted:  # roles are module paths inside the block, kept as they are
            if not all(is_path(roles[a]) for a in attrs) or len(set(roles.values())) < len(attrs):
                return None
            role_of = dict(roles)
            names = Namespace(RESERVED | {r.split(".")[0] for r in roles.values()})
        for a in [*attrs, *extra]:
            if a in role_of:
                continue
            what = kind(self.layers[a].ctor)
            toks = _tokens(self.layers[a].hint, self.dotted)
            inside = tuple(toks[:len(prefix)]) == prefix and len(toks) > len(prefix)
            joined = ("." if self.dotted else "_").join(toks[len(prefix):])
            taken = list(role_of.values())
            if a not in own and inside and self.dotted and is_path(joined) and not any(
                    r == joined or r.startswith(joined + ".") or joined.startswith(r + ".") for r in taken):
                role_of[a] = joined  # a pool inside the block, named by its scope ('branch4.0')
                continue
            role = roles.get(a) or (what if a in own else joined if inside else re.sub(r"_\d+$", "", a))
            role_of[a] = names.claim(role, fallback=what)
        return Instance(prefix, [layer.attr for layer in self.parts.layers if layer.attr in role_of], role_of,
                         stmts, inp=next(iter(inputs)), core=hi + 1 - lo)

    def _outputs(self, stmts: list[int]) -> list[str]:
        inside = set(stmts)
        produced = [o for i in stmts for o in self.parts.statements[i].outputs if o]
        return [v for v in produced if (self.users.get(v, set()) - inside) or v in self.graph.outputs]

    def _signature(self, inst: Instance, stmts: list[int], alias: dict[str, str] | None = None,
                   skip: set[str] = frozenset()) -> tuple | None:
        """What must be equal for two instances to share a class: the statements with layers replaced by
        roles and tensors by their position, and each layer's constructor without its numbers."""
        local = {inst.inp: "in", **(alias or {})}
        exprs = []
        for i in stmts:
            st = self.parts.statements[i]
            for o in st.outputs:
                if o:
                    local.setdefault(o, f"v{sum(1 for k in local if k not in (alias or {}))}")
            expr = TOKEN.sub(lambda m: "{" + local.get(self.parts.token_values[int(m.group(1))], "?") + "}",
                             st.expr)
            exprs.append((_SELF.sub(lambda m: "self." + inst.roles.get(m.group(1), "?" + m.group(1)), expr),
                          tuple(local.get(o, "_") if o else "_" for o in st.outputs), st.multi))
        ctors = []
        for a in inst.attrs:
            if a in skip:
                continue
            c = parse(self.layers[a].ctor)
            if c is None:
                return None
            inst.ctors[a] = c
            ctors.append((inst.roles[a], c.template))
        return tuple(exprs), tuple(ctors)

    # -- classes --------------------------------------------------------------------------------------
    def classes(self, instances: list[Instance]) -> list[list[Instance]]:
        by_roles: dict[tuple, list[Instance]] = {}
        for inst in instances:
            # Instances structure proposed must agree on all their layers, those without weights too.
            key = tuple(inst.roles[a] for a in inst.attrs if a in self.stateful or not inst.prefix)
            by_roles.setdefault(key, []).append(inst)
        found = []
        for group in by_roles.values():
            found += self._agree(group)
        for cls in sorted(found, key=len, reverse=True):
            for other in found:
                if other is not cls and other and cls and self._merge(cls, other):
                    other.clear()
        return [cls for cls in found if len(cls) >= 2]  # only what repeats

    def _merge(self, plain: list[Instance], extended: list[Instance]) -> bool:
        """Fold ``extended`` into ``plain`` when it is ``plain`` plus a chain of layers on the input whose
        result takes the input's place."""
        base, ext = plain[0], extended[0]
        if base.shortcut is not None or ext.shortcut is not None:
            return False
        base_roles, ext_roles = set(base.roles.values()), set(ext.roles.values())
        if not base_roles < ext_roles:
            return False
        shortcuts = []
        for inst in extended:
            extra = [a for a in inst.attrs if inst.roles[a] not in base_roles]
            chain = sorted(i for i in inst.stmts if set(self.refs[i]) & set(extra))
            value, ok = inst.inp, True
            for i in chain:
                st = self.parts.statements[i]
                ok = ok and self.reads[i] == [value] and len(st.outputs) == 1 and not st.multi
                value = st.outputs[0]
            rest = [i for i in inst.stmts if i not in chain]
            if not ok or len(self.users.get(value, ())) != 1 or value == inst.out:
                return False
            sig = self._signature(inst, rest, alias={value: "in"}, skip=set(extra))
            if sig != base.signature:
                return False
            shortcuts.append(Shortcut([inst.roles[a] for a in extra], chain, value))
        for inst, shortcut in zip(extended, shortcuts):
            inst.shortcut = shortcut
        plain.extend(extended)
        plain.sort(key=lambda inst: inst.stmts[0])
        return True

    def _agree(self, group: list[Instance]) -> list[list[Instance]]:
        """Cut every instance's trailing statements to the longest tail that all of them share and that
        leaves one output, then split the group by signature. A class of one instance may still merge."""
        longest = min(len(g.stmts) - g.core for g in group)
        for tail in range(longest, -1, -1):
            ok = []
            for g in group:
                stmts = g.stmts[:g.core + tail]
                outs = self._outputs(stmts)
                if len(outs) == 1 and self.parts.statements[stmts[-1]].outputs == outs:
                    ok.append((g, stmts, outs[0]))
            if len(ok) < min(2, len(group)):
                continue
            classes: dict[tuple, list[Instance]] = {}
            for g, stmts, out in ok:
                used = {a for i in stmts for a in self.refs[i]}
                trimmed = Instance(g.prefix, [a for a in g.attrs if a in used], {a: g.roles[a] for a in used},
                                    stmts, g.inp, out, g.core)
                # A convolution and its BatchNorm are one layer here: a class needs two of those.
                weighted = [a for a in trimmed.attrs if a in self.stateful and "Norm" not in self.layers[a].ctor]
                if len(weighted) < 2 or self.keep & set(trimmed.attrs):
                    continue  # no class of one layer; the classifier stays where fine-tuning expects it
                sig = self._signature(trimmed, stmts)
                if sig is not None:
                    trimmed.signature = sig
                    classes.setdefault(sig, []).append(trimmed)
            found = list(classes.values())
            if len(group) == 1 or any(len(c) >= 2 for c in found):
                return found
        return []


def _coverage(classes: list[list[Instance]]) -> int:
    return sum(len(inst.attrs) for c in classes for inst in c)


# Small integer constants of a PyTorch export (shape arithmetic the exporter left, such as ShuffleNet's channel
# shuffle with do_constant_folding=False) are no state of the original model: written as literals and kept out
# of the state_dict, they leave the export's module tree and its state_dict keys to the weights.
_LITERAL_SIZE = 16


def literal_constants(graph: Graph, parts: ModuleParts) -> ModuleParts:
    if not graph.producer.lower().startswith("pytorch"):
        return parts
    small = {key for key, a in parts.tensors.items() if "." not in key and a.dtype.kind in "iub"
             and a.size <= _LITERAL_SIZE}
    weights = [layer.hint for layer in parts.layers if layer.attr in {k.split(".")[0] for k in parts.tensors}
               and layer.attr not in small]
    if not small or not weights or not all(is_path(h) for h in weights):
        return parts
    layers = []
    for layer in parts.layers:
        if layer.attr in small:
            array = parts.tensors[layer.attr]
            values = lit(array.tolist()) if array.ndim else lit(array.item())
            dtype = torch_dtype(array.dtype)
            layer = Layer(layer.attr, f"nn.Buffer(torch.tensor({values}, dtype={dtype}), persistent=False)", layer.hint)
        layers.append(layer)
    tensors = {k: a for k, a in parts.tensors.items() if k not in small}
    return ModuleParts(layers, parts.statements, tensors, parts.token_values, parts.tokens, parts.helpers,
                       parts.classes)


def find_blocks(graph: Graph, parts: ModuleParts, keep: set[str] = frozenset()) -> tuple[Discovery, list[list[Instance]]]:
    """The classes of blocks ``parts`` repeats, each a list of its instances (none overlapping), in order.
    Layers named in ``keep`` stay attributes of the module itself."""
    finder = Discovery(graph, parts, {layer.attr for layer in parts.layers if {layer.attr, layer.hint} & set(keep)})
    depth_max = max((len(_tokens(layer.hint, finder.dotted)) for layer in parts.layers), default=0)
    best: list[list[Instance]] = []
    for depth in range(1, depth_max + 1):
        found = finder.classes(finder.instances(depth))
        if _coverage(found) > _coverage(best):
            best = found
    if not best and not finder.dotted:
        best = finder.classes(finder.stretches())
    taken: set[int] = set()
    kept = []
    for cls in sorted(best, key=lambda c: min(c[0].stmts)):
        insts = [inst for inst in cls if not taken & set(inst.stmts)]
        if len(insts) >= 2:
            kept.append(insts)
            for inst in insts:
                taken.update(inst.stmts)
    return finder, kept
