"""Writing what block discovery found: one class per block, instances and stages in the module, the
module's statements calling them, weights moved under the new keys."""
from __future__ import annotations

import ast
import re

from .blocks import Discovery, Instance, find_blocks, literal_constants
from .ctors import Ctor, fill, holes_in, kind, num, parse, type_of
from .emit import emit_body
from .ir import Graph
from .lower import TOKEN, Layer, ModuleParts, Statement
from .naming import RESERVED, Namespace, class_name, sanitize
from .tree import Conflict, is_path, nest, ref, restore

_SELF = re.compile(r"self\.(\w+)")
LINE = 110
MIN_LOOP = 3  # a stage whose arguments step evenly is written as a loop from this many instances on
_GENERIC = {"", "conv", "res", "layer", "layers", "block", "blocks", "stage", "unit", "features"}
_POSITIONAL = {"Conv": ("in_channels", "out_channels"), "ConvTranspose": ("in_channels", "out_channels"),
               "BatchNorm": ("num_features",), "InstanceNorm": ("num_features",), "Linear": ("in_features",
                                                                                             "out_features")}


def renumber(parts: ModuleParts, blocks) -> ModuleParts:
    """Claim the remaining layers' names afresh, so the pools left between blocks are `maxpool_2`, `maxpool_3`
    rather than keeping the numbers of the pools that moved into blocks."""
    names = Namespace()
    rename = {}
    for layer in parts.layers:
        wanted = layer.attr if any(layer is b for b in blocks) else layer.hint or layer.attr
        rename[layer.attr] = names.claim(wanted, fallback=kind(layer.ctor))
    if all(k == v for k, v in rename.items()):
        return parts
    for layer in parts.layers:
        layer.attr = rename[layer.attr]
    sub = lambda m: "self." + rename.get(m.group(1), m.group(1))  # noqa: E731
    parts.statements = [Statement(st.node, st.outputs, _SELF.sub(sub, st.expr), st.multi) for st in parts.statements]
    parts.tensors = {".".join([rename.get(k.split(".")[0], k.split(".")[0]), *k.split(".")[1:]]): v
                     for k, v in parts.tensors.items()}
    return parts


def write_blocks(graph: Graph, parts: ModuleParts, finder: Discovery, classes: list[list[Instance]]) -> ModuleParts:
    """``parts`` with the instances of ``classes`` (see :func:`.blocks.find_blocks`) replaced by instances of
    emitted classes; unchanged if there are none."""
    # An export's module tree comes back even where nothing repeats.
    return Rewrite(graph, parts, finder).run(classes) if classes or finder.dotted else parts


class Decline(Exception):
    """A class cannot be written after all; its instances stay flat."""


class Rewrite:
    """Emits the classes and rewrites the module to call them."""

    def __init__(self, graph: Graph, parts: ModuleParts, finder: Discovery):
        self.graph, self.parts, self.finder = graph, parts, finder
        self.class_names = Namespace(RESERVED | {"Model"})
        self.strided: dict[str, bool] = {}  # class name -> whether a layer of it has a stride
        self._moved: dict = {}
        self._instance_decls: list[tuple[Layer, Instance]] = []
        self.stages = 0

    def run(self, classes: list[list[Instance]]) -> ModuleParts:
        out = self.out = ModuleParts(tensors={}, token_values=self.parts.token_values, tokens=self.parts.tokens,
                                     helpers=self.parts.helpers, classes=dict(self.parts.classes))
        calls: dict[int, tuple[Instance, str, list]] = {}  # first statement -> (instance, class, args)
        for insts in sorted(classes, key=lambda c: min(c[0].stmts)):
            try:
                name, args = self._emit_class(insts)
            except Decline:  # without the instances that have optional layers, if enough remain
                insts = [inst for inst in insts if inst.shortcut is None]
                try:
                    name, args = self._emit_class(insts) if len(insts) >= 2 else (None, None)
                except Decline:
                    name = None
                if name is None:
                    continue
            for inst, a in zip(insts, args):
                calls[inst.stmts[0]] = (inst, name, a)
        skip = {i for inst, _, _ in calls.values() for i in inst.stmts[1:]}
        owned = {a: inst for inst, _, _ in calls.values() for a in inst.attrs}
        # Statements: one call per instance, then runs of instances of one class become stages.
        stmts: list[Statement] = []
        run: list[tuple[Instance, str, list]] = []
        decls: dict[str, Layer] = {}

        def flush():
            if not run:
                return
            stage = self._stage_name(run) if len(run) >= 2 and not self.finder.dotted else None
            if stage is None:
                for inst, cls, args in run:
                    attr = self.attrs.claim(_instance_name(inst.prefix), fallback="block")
                    self._place(inst, attr, out)
                    decls[inst.attrs[0]] = Layer(attr, f"{cls}({', '.join(args)})")
                    self._instance_decls.append((decls[inst.attrs[0]], inst))
                    stmts.append(Statement(self.parts.statements[inst.stmts[0]].node, [inst.out],
                                           f"self.{attr}({self.parts.tokens[inst.inp]})"))
            else:
                attr = self.attrs.claim(stage, fallback="stage")
                for k, (inst, _, _) in enumerate(run):
                    self._place(inst, f"{attr}.{k}", out)
                decls[run[0][0].attrs[0]] = Layer(attr, _sequential(run))
                stmts.append(Statement(self.parts.statements[run[0][0].stmts[0]].node, [run[-1][0].out],
                                       f"self.{attr}({self.parts.tokens[run[0][0].inp]})"))
            run.clear()

        self.attrs = Namespace(RESERVED | {layer.attr for layer in self.parts.layers if layer.attr not in owned})
        for i, st in enumerate(self.parts.statements):
            if i in skip:
                continue
            if i in calls:
                inst, cls, args = calls[i]
                # A stage structure proposed may open with a block of its own (the one that downsamples).
                opens = len(run) == 1 and not run[0][0].prefix and not inst.prefix
                chained = run and (run[-1][1] == cls or opens) and run[-1][0].out == inst.inp \
                    and _stage_key(run[-1][0].prefix) == _stage_key(inst.prefix) \
                    and self.finder.users.get(inst.inp, set()) <= set(inst.stmts) \
                    and inst.inp not in self.graph.outputs
                if not chained:
                    flush()
                run.append(calls[i])
                continue
            flush()
            stmts.append(st)
        flush()
        for layer in self.parts.layers:
            if layer.attr in decls:
                out.layers.append(decls[layer.attr])
            elif layer.attr not in owned:
                out.layers.append(layer)
        for key, array in self.parts.tensors.items():
            head = key.split(".")[0]
            if head not in owned:
                out.tensors[key] = array
        for key, array in self._moved.items():
            out.tensors[key] = array
        out.statements = stmts
        out = renumber(out, list(decls.values()))
        if not self.finder.dotted:
            return out
        prefix_of = {id(layer): inst.prefix for layer, inst in self._instance_decls}
        stateful = {key.split(".")[0] for key in out.tensors}
        paths = {layer.attr: list(prefix_of[id(layer)]) if id(layer) in prefix_of else layer.hint.split(".")
                 for layer in out.layers if id(layer) in prefix_of or (layer.attr in stateful and is_path(layer.hint))}
        # Layers without weights go to their scope's place too ('features.2', a max-pool) where that is free.
        for layer in out.layers:
            path = layer.hint.split(".")
            if layer.attr not in paths and "." in layer.hint and is_path(layer.hint) and not any(
                    p[:len(path)] == path or path[:len(p)] == p for p in paths.values()):
                paths[layer.attr] = path
        return restore(out, paths)

    def _place(self, inst: Instance, path: str, out: ModuleParts) -> None:
        for key, array in self.parts.tensors.items():
            head, _, rest = key.partition(".")
            if head in inst.roles:
                self._moved[f"{path}.{inst.roles[head]}" + (f".{rest}" if rest else "")] = array

    def _stage_name(self, run) -> str | None:
        if not run[0][0].prefix:  # structure proposed the blocks: stages are numbered, as torchvision's are
            self.stages += 1
            return f"stage{self.stages}"
        key = _stage_key(run[0][0].prefix)
        return "_".join(key) if key and sanitize("_".join(key)) else None

    def _emit_class(self, insts: list[Instance]) -> tuple[str, list[list[str]]]:
        first = next(inst for inst in insts if inst.shortcut is None)
        extended = [inst for inst in insts if inst.shortcut is not None]
        optional = extended[0].shortcut.roles if extended else []
        # One argument per distinct column of values that varies between instances.
        columns: dict[tuple, str] = {}
        params = Namespace(RESERVED | {"x"})
        filled: dict[str, list[str]] = {}
        decl: list[tuple[str, Ctor, bool]] = []  # (role, constructor, optional)
        owner = extended[0] if extended else first
        for a in owner.attrs:
            role = owner.roles[a]
            is_optional = role in optional
            users = extended if is_optional else insts
            ctor = owner.ctors.get(a) or parse(self.layers[a].ctor)
            values = [(u.ctors.get(u.attr_of(role)) or parse(self.layers[u.attr_of(role)].ctor)).values
                      for u in users]
            slots = []
            for hole in range(len(ctor.values)):
                column = tuple(v[hole] for v in values)
                if len(set(column)) == 1:
                    slots.append(num(column[0]))
                    continue
                if is_optional:  # an optional layer's numbers must be arguments the class has anyway
                    name = next((n for c, n in columns.items()
                                 if tuple(c[insts.index(u)] for u in extended) == column), None)
                    if name is None:
                        raise Decline(f"{role} has its own sizes")
                    slots.append(name)
                    continue
                if column not in columns:
                    columns[column] = params.claim(self._param_name(first, first.attr_of(role), ctor, hole,
                                                                    not decl), fallback="n")
                slots.append(columns[column])
            filled[role] = slots
            decl.append((role, ctor, is_optional))
        flag = params.claim(optional[0].split(".")[0], fallback="shortcut") if optional else ""
        optional_tops = {role.split(".")[0] for role, _, opt in decl if opt}
        if any(role.split(".")[0] in optional_tops for role, _, opt in decl if not opt):
            raise Decline("optional and present layers share a container")
        try:
            tops = nest([(role.split("."), fill(ctor, filled[role])) for role, ctor, _ in decl], 8)
        except Conflict as exc:
            raise Decline(str(exc)) from None
        lines = [f"        self.{name} = {ctor}" + (f" if {flag} else None" if name in optional_tops else "")
                 for name, ctor in tops]
        stmts = []
        for i in first.stmts:
            st = self.parts.statements[i]
            expr = _SELF.sub(lambda m: "self." + _ref(first.roles.get(m.group(1), m.group(1))), st.expr)
            stmts.append(Statement(st.node, st.outputs, expr, st.multi))
        if extended:
            stmts = self._with_shortcut(first, extended[0], stmts)
        body = emit_body(stmts, self.parts, {first.inp: "x"}, [first.out],
                         weighted={f"self.{_ref(first.roles[a])}(" for a in first.attrs if a in self.finder.stateful})
        word, strided = class_name(self._class_word(first, stmts, decl)), _strided(decl)
        if word in self.class_names and strided and not self.strided.get(word, True):
            word += "Reduction"  # the Inception that downsamples, beside the Inception that does not
        cls = self.class_names.claim(word, fallback="Block")
        self.strided[cls] = strided
        sig = ", ".join([f"{n}: {type_of(c)}" for c, n in columns.items()]
                        + ([f"{flag}: bool = False"] if flag else []))
        src = (f"class {cls}(nn.Module):\n"
               + _wrap(f"    def __init__(self{', ' + sig if sig else ''}) -> None:", " " * 17) + "\n"
               + "        super().__init__()\n" + "\n".join(lines) + "\n\n"
               "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
               + "".join(f"        {line}\n" for line in body))
        self.out.classes[cls] = src
        args = [[num(column[k]) for column in columns] + ([f"{flag}=True"] if inst.shortcut else [])
                for k, inst in enumerate(insts)]
        return cls, args

    def _class_word(self, inst: Instance, stmts: list[Statement], decl) -> str:
        """The instances' name without its numbers ('fire2' -> 'fire', ('inception', '3a') -> 'inception');
        where that says nothing ('conv2_1', 'layer1.0'), what the block does: a dense layer concatenates
        onto its input, a residual block adds it, and one that concatenates its pooled input downsamples
        beside the residual blocks (ShuffleNet's strided unit)."""
        words = [t for t in inst.prefix if not re.search(r"\d", t)] or [re.sub(r"\d.*", "", t) for t in inst.prefix]
        word = "_".join(w for w in words if w)
        if word.lower() not in _GENERIC:
            return word
        x = self.parts.tokens[inst.inp]
        if stmts[-1].expr.startswith("torch.cat([" + x):
            return "DenseLayer"
        convs = sum(bool(ctor.tree.func) and ast.unparse(ctor.tree.func).startswith("nn.Conv")
                    for _, ctor, opt in decl if not opt)
        residual = "Bottleneck" if convs >= 3 else "BasicBlock"
        inputs = {x} | {self.parts.tokens[v] for v in self.parts.tokens if v.endswith("\x00shortcut")}
        if any(" + " in st.expr and any(t in st.expr for t in inputs) for st in stmts):
            return residual
        pooled = {self.parts.tokens[st.outputs[0]] for st in stmts
                  if len(st.outputs) == 1 and re.fullmatch(r"self\.\w+\(" + re.escape(x) + r"\)", st.expr)}
        if any(st.expr.startswith("torch.cat([") and any(t in st.expr for t in pooled) for st in stmts):
            return residual + "Reduction"
        return "Block"

    def _with_shortcut(self, first: Instance, ext: Instance, stmts: list[Statement]) -> list[Statement]:
        """``first``'s statements with its input, where ``ext`` reads its shortcut, replaced by
        ``x if self.<optional> is None else <the optional layers applied to x>``."""
        shortcut, tokens, values = ext.shortcut, self.parts.tokens, self.parts.token_values
        top = shortcut.roles[0].split(".")[0]
        x = tokens[first.inp]
        calls = [(self.finder.refs[i], _SELF.sub("", self.parts.statements[i].expr)) for i in shortcut.chain]
        if [[ext.roles[a] for a in refs] for refs, _ in calls] == [[f"{top}.{k}"] for k in range(len(calls))] \
                and len(shortcut.roles) == len(calls) and all(TOKEN.fullmatch(rest[1:-1]) for _, rest in calls):
            expr = f"self.{top}({x})"  # the chain is the whole container, in order
        else:
            expr = x
            for i in shortcut.chain:
                text = _SELF.sub(lambda m: "self." + _ref(ext.roles.get(m.group(1), m.group(1))),
                                 self.parts.statements[i].expr)
                expr = TOKEN.sub(lambda m, e=expr: e, text)
        rest = [i for i in ext.stmts if i not in shortcut.chain]
        consumer = next(k for k, i in enumerate(rest) if shortcut.value in self.finder.reads[i])
        target = stmts[consumer]
        if x not in target.expr:
            raise Decline("the shortcut's place is not the input")
        value = f"{first.inp}\x00shortcut"
        values.append(value)
        tokens[value] = f"\x00{len(values) - 1}\x00"
        at = target.expr.index(x)
        swapped = Statement(target.node, target.outputs,
                            target.expr[:at] + tokens[value] + target.expr[at + len(x):], target.multi)
        guard = Statement(target.node, [value], f"{x} if self.{top} is None else {expr}")
        return stmts[:consumer] + [guard, swapped] + stmts[consumer + 1:]

    @staticmethod
    def _param_name(inst: Instance, attr: str, ctor: Ctor, hole: int, first_layer: bool) -> str:
        role = inst.roles[attr]
        call = ctor.tree
        kind = ast.unparse(call.func).split(".")[-1].rstrip("123dD")
        for i, arg in enumerate(call.args):
            if holes_in(arg, ctor) and hole in holes_in(arg, ctor):
                names = _POSITIONAL.get(kind, ())
                what = names[i] if i < len(names) else f"arg{i}"
                if what in ("in_channels", "in_features", "num_features") and first_layer:
                    return "in_channels"
                return role if what in ("out_channels", "out_features", "num_features") else f"{role}_{what}"
        for kw in call.keywords:
            if hole in holes_in(kw.value, ctor):
                return kw.arg or role
        return role


def _ref(role: str) -> str:
    return ref(role.split("."))


def _stage_key(prefix: tuple[str, ...]) -> tuple[str, ...]:
    """What instances of one stage share: ('res2', '0') -> ('res2',), ('inception', '4a') -> ('inception', '4').
    A name of one part ('fire2') has no stage."""
    if len(prefix) < 2:
        return ()
    lead = re.match(r"\d+(?=[A-Za-z])", prefix[-1])
    return prefix[:-1] + ((lead.group(0),) if lead else ())


def _strided(decl) -> bool:
    """Whether a layer steps by more than one (a stride that is a constructor argument counts)."""
    for _, ctor, _ in decl:
        for kw in ctor.tree.keywords if ctor.tree.func else ():
            if kw.arg == "stride":
                try:
                    value = ast.literal_eval(kw.value)
                except ValueError:
                    return True
                if max(value if isinstance(value, tuple) else (value,)) > 1:
                    return True
    return False


def _instance_name(prefix: tuple[str, ...]) -> str:
    return "_".join(prefix)


def _sequential(run) -> str:
    """An nn.Sequential of the run's instances; sizes that step evenly become a loop."""
    cls = run[0][1]
    args = [a for _, _, a in run]
    numeric = all(re.fullmatch(r"-?\d+", v) for a in args for v in a) and len({len(a) for a in args}) == 1
    if len(run) >= MIN_LOOP and numeric and all(c == cls for _, c, _ in run):
        columns = [[int(v) for v in column] for column in zip(*args)]
        steps = [(c[0], c[1] - c[0]) for c in columns]
        if all(c[k] == a + d * k for c, (a, d) in zip(columns, steps) for k in range(len(c))):
            terms = [str(a) if d == 0 else (f"{a} + {d} * i" if a else f"{d} * i") for a, d in steps]
            index = "i" if any(d for _, d in steps) else "_"
            return f"nn.Sequential(*({cls}({', '.join(terms)}) for {index} in range({len(run)})))"
    calls = [f"{c}({', '.join(a)})" for _, c, a in run]
    items, k = [], 0
    while k < len(calls):
        n = 1
        while k + n < len(calls) and calls[k + n] == calls[k]:
            n += 1
        items += [f"*({calls[k]} for _ in range({n}))"] if n >= MIN_LOOP else calls[k:k + n]
        k += n
    flat = "nn.Sequential(" + ", ".join(items) + ")"
    if len(flat) <= LINE - 30:
        return flat
    return "nn.Sequential(\n" + "".join(f"            {c},\n" for c in items) + "        )"


def _wrap(line: str, indent: str) -> str:
    """A signature longer than a line, broken after commas."""
    if len(line) <= LINE + 1:
        return line
    out, current = [], ""
    for piece in line.split(", "):
        if current and len(current) + len(piece) + 2 > LINE:
            out.append(current + ",")
            current = indent + piece
        else:
            current = f"{current}, {piece}" if current else piece
    return "\n".join(out + [current])


def structured(graph: Graph, parts: ModuleParts, keep: set[str] = frozenset()) -> ModuleParts:
    """``parts`` as the emitted module has them: an export's module tree restored and repeated blocks written as
    classes. Layers named in ``keep`` stay attributes of the module itself (the classifier, to split the head at)."""
    parts = literal_constants(graph, parts)
    return write_blocks(graph, parts, *find_blocks(graph, parts, keep))
