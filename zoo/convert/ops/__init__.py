"""Built-in op handlers, one module per op family."""
from . import (  # noqa: F401
    activation, attention, control, conv, detection, elementwise, indexing, linear, loss, misc, norm, pool, reduce,
    regularization,
    recurrent, resize,
    shape,
)
