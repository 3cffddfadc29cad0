"""Built-in op handlers, one module per op family."""
from . import (  # noqa: F401
    activation, attention, contrib_attention, contrib_dynamic, contrib_fused, control, conv, detection, elementwise,
    flex_attention, indexing, integer, linear, linear_attention, loss, misc, ml, norm, ort_math, pool, qlinear, quant,
    recurrent, reduce, regularization, resize, sequence, shape, signal, space, training,
)
