"""uint64 arithmetic and comparisons on the int64 bits, since torch has few uint64 kernels.

Wrapping Add, Sub and Mul are the same on the int64 view; comparisons, Min and Max flip the sign bit first
(so unsigned order becomes signed order); Div and Mod do unsigned division in int64 (``udivmod64``).
Results are viewed back as uint64.
"""
from __future__ import annotations

import numpy as np

SIGN = -(1 << 63)  # x ^ SIGN maps unsigned order onto signed order

UDIVMOD64 = '''
def udivmod64(a, b):
    # Unsigned 64-bit quotient and remainder of int64 bit patterns (a // b, a % b as uint64), exactly.
    a, b = torch.broadcast_tensors(a, b)
    small = b > 0  # divisors below 2 ** 63: halve a so the signed division sees non-negative numbers
    half = torch.bitwise_right_shift(a, 1) & 0x7FFFFFFFFFFFFFFF
    q = torch.bitwise_left_shift(torch.div(half, torch.where(small, b, 1), rounding_mode='floor'), 1)
    q = torch.where(small, q, 0)  # a divisor of 2 ** 63 or more goes into a at most once
    r = a - q * b
    more = (r ^ -9223372036854775808) >= (b ^ -9223372036854775808)
    return q + more.to(torch.int64), torch.where(more, r - b, r)
'''


def is_uint64(ctx, i: int = 0) -> bool:
    dtype = ctx.dtype(i)
    return dtype is not None and np.dtype(dtype).name == "uint64"


def bits(ctx, i: int) -> str:
    """Input ``i`` as int64 bits (constants stay tensors: a uint64 literal may not fit an int64)."""
    return f"{ctx.x(i)}.view(torch.int64)"


_WRAPPING = {"Add": "+", "Sub": "-", "Mul": "*"}
_ORDER = {"Less": "<", "Greater": ">", "LessOrEqual": "<=", "GreaterOrEqual": ">="}


def binary(ctx) -> str | None:
    """The uint64 expression of a binary op, or None where the default one works (Equal, bitwise ops)."""
    a, b = bits(ctx, 0), bits(ctx, 1)
    if ctx.op_type in _WRAPPING:
        return f"({a} {_WRAPPING[ctx.op_type]} {b}).view(torch.uint64)"
    if ctx.op_type in _ORDER:
        return f"({a} ^ {SIGN}) {_ORDER[ctx.op_type]} ({b} ^ {SIGN})"
    if ctx.op_type in ("Div", "Mod"):
        fn = ctx.helper("udivmod64", UDIVMOD64)
        return f"{fn}({a}, {b})[{int(ctx.op_type == 'Mod')}].view(torch.uint64)"
    return None


def extremum(ctx, fn: str) -> str:
    """Variadic Max/Min of uint64 inputs: compare with the sign bit flipped, flip it back."""
    expr = f"{bits(ctx, 0)} ^ {SIGN}"
    for i in range(1, ctx.num_inputs):
        expr = f"{fn}({expr}, {bits(ctx, i)} ^ {SIGN})"
    return f"({expr} ^ {SIGN}).view(torch.uint64)"
