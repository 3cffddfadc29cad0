"""Turn names found in an ONNX file into safe, unique, readable Python identifiers.

Only the characters [A-Za-z0-9_] survive, so nothing from the file can reach generated source as code.
"""
from __future__ import annotations

import builtins
import keyword
import os
import re

from torch import nn

MAX_LEN = 48
_ROLE_WORDS = {
    "w", "b", "weight", "weights", "bias", "biases", "kernel", "s", "scale", "rm", "riv", "mean", "var",
    "running", "gamma", "beta", "moving", "variance", "param", "params",
}
# Names the generated module itself relies on, plus every attribute an nn.Module already has.
RESERVED = (
    {"torch", "nn", "F", "self", "forward", "super", "init", "Tensor", "tuple", "float", "int", "list"}
    | set(dir(nn.Module))
    | set(dir(builtins))
)


def sanitize(text: str) -> str:
    """An ASCII identifier fragment, possibly empty."""
    out = re.sub(r"[^A-Za-z0-9]+", "_", text)
    out = re.sub(r"_+", "_", out).strip("_")
    return out[:MAX_LEN].rstrip("_")


def is_safe_identifier(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)) and not keyword.iskeyword(name)


def class_name(name: str) -> str:
    parts = [p for p in sanitize(name).split("_") if p]
    if not parts:
        return "Model"
    joined = parts[0][:1].upper() + parts[0][1:]
    for part in parts[1:]:
        joined += ("_" + part) if part[0].isdigit() else part[:1].upper() + part[1:]
    return joined if not joined[0].isdigit() else "Model" + joined


def strip_role(name: str) -> str:
    """'conv1_w_0' -> 'conv1', 'layer1.0.conv1.weight' -> 'layer1.0.conv1', 'block.0.weight' -> 'block.0'.

    A trailing number goes only after '_' (Caffe2's blob suffix); after '.' it is a module index."""
    parts = re.split(r"([/._:])", name)
    while len(parts) >= 3 and (parts[-1].lower() in _ROLE_WORDS or not parts[-1]
                               or (parts[-1].isdigit() and parts[-2] == "_")):
        parts = parts[:-2]
    return "".join(parts)


def torch_scope_name(node_name: str, op_type: str, sep: str = "_") -> str:
    """'/layer1/layer1.0/conv1/Conv' (torch.onnx.export scopes) -> 'layer1_0_conv1' ('layer1.0.conv1' with
    ``sep='.'``: the module path)."""
    parts = [p for p in node_name.split("/") if p]
    # The last part names the node's op, which may be another than the one declaring the layer ('MatMul'
    # for a Linear fused from MatMul and Add).
    if parts and re.fullmatch("(" + re.escape(op_type) + r"|[A-Z][A-Za-z]*)(_\d+)?", parts[-1]):
        parts = parts[:-1]
    kept: list[str] = []
    previous = ""
    for part in parts:
        kept.append(part[len(previous) + 1:] if previous and part.startswith(previous + ".") else part)
        previous = part
    return sep.join(kept)


def looks_generated(name: str) -> bool:
    """Names like 'n12', 'node_3', 'Conv_0', 'onnx::Conv_193' carry no meaning."""
    return bool(re.fullmatch(r"(n|node|op)?_?\d+|[A-Za-z]+_?\d*|onnx::.*|val_\d+", name)) or not sanitize(name)


def common_prefix(names: list[str]) -> str:
    """The longest prefix ending at a separator shared by all names (e.g. Caffe2's 'gpu_0/')."""
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(names)
    cut = max(prefix.rfind("/"), prefix.rfind(":"))
    return prefix[: cut + 1] if cut >= 0 else ""


class Namespace:
    """Hands out unique identifiers; a clash with a reserved or earlier name gets a numeric suffix."""

    def __init__(self, reserved: set[str] | frozenset[str] = frozenset()):
        self._taken = set(reserved)

    def claim(self, wanted: str, fallback: str = "x") -> str:
        base = sanitize(wanted) or fallback
        if base[0].isdigit():
            base = f"{fallback}_{base}"
        if keyword.iskeyword(base) or base in RESERVED or keyword.issoftkeyword(base):
            base += "_"
        name, n = base, 1
        while name in self._taken:
            n += 1
            name = f"{base}_{n}"
        self._taken.add(name)
        return name

    def __contains__(self, name: str) -> bool:
        return name in self._taken


def safe_comment(text: str) -> str:
    """Text for a generated comment: printable ASCII only, no line breaks."""
    return re.sub(r"[^A-Za-z0-9 ._\-+=,:()\[\]/@#]", "_", text)[:120]


__all__ = ["Namespace", "sanitize", "class_name", "strip_role", "torch_scope_name", "looks_generated",
           "common_prefix", "safe_comment", "is_safe_identifier"]
