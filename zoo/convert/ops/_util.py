"""Small helpers shared by the op families."""
from __future__ import annotations

from ..errors import Unsupported


def spatial_pads(pads: list[int] | None, n: int) -> tuple[list[int], list[int]]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] -> (begins, ends)."""
    pads = list(pads) if pads else [0] * (2 * n)
    if len(pads) != 2 * n:
        raise Unsupported(f"pads {pads} do not match {n} spatial dimensions")
    return pads[:n], pads[n:]


def torch_pad(begins: list[int], ends: list[int]) -> tuple[int, ...]:
    """F.pad's order: last dimension first, (begin, end) pairs."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return tuple(out)


def auto_pads(ctx, kernel: list[int], strides: list[int], dilations: list[int]) -> tuple[list[int], list[int]]:
    """Explicit pads for auto_pad SAME_UPPER/SAME_LOWER/VALID (needs static spatial sizes for SAME_*)."""
    mode = ctx.attr("auto_pad", "NOTSET")
    n = len(kernel)
    if mode in ("NOTSET", "", None):
        return spatial_pads(ctx.attr("pads"), n)
    if mode == "VALID":
        return [0] * n, [0] * n
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad {mode!r}")
    shape = ctx.shape(0)
    if shape is None or any(not isinstance(d, int) for d in shape[2:]):
        raise Unsupported("auto_pad SAME needs static spatial sizes")
    begins, ends = [], []
    for size, k, s, d in zip(shape[2:], kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return begins, ends


def one_or_all(values: list[int]) -> object:
    """3 for [3, 3], (3, 5) for [3, 5]: the way a person writes kernel sizes."""
    return values[0] if len(set(values)) == 1 else tuple(values)


def axis(ctx, value: int, rank: int) -> int:
    if not -rank <= value < max(rank, 1):
        raise Unsupported(f"axis {value} out of range for rank {rank}")
    return value % rank if rank else 0


def wrap_negative(index: str, size: str) -> str:
    """ONNX index tensors may count from the end; PyTorch's gather/scatter need them in [0, size)."""
    return f"torch.where({index} < 0, {index} + {size}, {index})"


def constant(ctx, key: str, array) -> str:
    """A tensor the handler derives from attributes (tree tables, n-gram pools), held by the module like any
    other constant of the graph: a parameter if floating point, else a buffer, named after the node."""
    import numpy as np

    from ..ir import Value

    graph = ctx._lowering.graph
    base = f"{ctx.node.name or ctx.op_type.lower()}_{key}"
    name, k = base, 1
    while name in graph.values:
        k += 1
        name = f"{base}{k}"
    array = np.ascontiguousarray(array)
    graph.values[name] = Value(name, tuple(array.shape), array.dtype, array)
    return ctx._lowering.reference(name)
