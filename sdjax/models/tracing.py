"""Fast abstract model construction.

Building an NNX model under a trace (`nnx.eval_shape`, or a jitted initialisation) updates the RNG
counters once per parameter, and flax reads `.sharding` of each traced counter; JAX answers with an
AttributeError whose message walks the whole trace so far to explain the tracer's origin. That is
quadratic in the number of parameters (about 20 s for an SD 2 UNet). Inside `fast_tracing()` the
origin explanation is skipped: only error messages lose that paragraph. Threads may nest it: the
explanation comes back when the last of them leaves.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from jax._src.interpreters import partial_eval

_TRACER = partial_eval.DynamicJaxprTracer
_ORIGIN_MSG = _TRACER._origin_msg
_lock = threading.Lock()
_depth = 0  # open fast_tracing() contexts, over all threads


@contextlib.contextmanager
def fast_tracing() -> Iterator[None]:
    global _depth
    with _lock:
        _depth += 1
        _TRACER._origin_msg = lambda self: ""
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if not _depth:
                _TRACER._origin_msg = _ORIGIN_MSG
