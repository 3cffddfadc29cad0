"""Op handlers, found by (domain, op type) and the model's opset.

A handler registered with ``since=v`` serves every opset from v up to the next registration's ``since``,
mirroring how ONNX schemas carry a ``since_version``: old (7-9) and the newest opsets resolve alike.
"""
from __future__ import annotations

import importlib
from typing import Callable

Handler = Callable[..., object]
_HANDLERS: dict[tuple[str, str], list[tuple[int, Handler]]] = {}
_builtins_loaded = False


def _normalize(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register_op(op_type: str, *, domain: str = "", since: int = 1) -> Callable[[Handler], Handler]:
    """Register ``fn(node) -> expression`` as the handler of ``op_type`` from opset ``since`` on.

    A later registration for the same op and ``since`` replaces the earlier one, so users can override
    built-in handlers as well as add missing ops. See README ("Adding an op") for a worked example.
    """
    if not isinstance(since, int) or since < 1:
        raise ValueError(f"register_op({op_type!r}): since must be a positive opset version, got {since!r}")

    def decorate(fn: Handler) -> Handler:
        entries = _HANDLERS.setdefault((_normalize(domain), op_type), [])
        entries[:] = sorted([e for e in entries if e[0] != since] + [(since, fn)], key=lambda e: e[0])
        return fn

    return decorate


def find_handler(domain: str, op_type: str, opset: int) -> Handler | None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module(f"{__package__}.ops")
    found = None
    for since, fn in _HANDLERS.get((_normalize(domain), op_type), ()):
        if since <= opset:
            found = fn
    return found


def supported_ops() -> list[tuple[str, str, int]]:
    find_handler("", "", 0)
    return sorted((d, op, since) for (d, op), entries in _HANDLERS.items() for since, _ in entries)
