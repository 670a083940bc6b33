"""Fast abstract model construction.

Building an NNX model under a trace (`nnx.eval_shape`, or a jitted initialisation) updates the RNG
counters once per parameter, and flax reads `.sharding` of each traced counter; JAX answers with an
AttributeError whose message walks the whole trace so far to explain the tracer's origin. That is
quadratic in the number of parameters (about 20 s for an SD 2 UNet). Inside `fast_tracing()` the
origin explanation is skipped: only error messages lose that paragraph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from jax._src.interpreters import partial_eval


@contextlib.contextmanager
def fast_tracing() -> Iterator[None]:
    tracer = partial_eval.DynamicJaxprTracer
    original = tracer._origin_msg
    tracer._origin_msg = lambda self: ""
    try:
        yield
    finally:
        tracer._origin_msg = original
