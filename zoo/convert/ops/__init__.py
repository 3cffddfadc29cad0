"""Built-in op handlers, one module per op family."""
from . import activation, conv, elementwise, linear, norm, pool, regularization, shape  # noqa: F401
