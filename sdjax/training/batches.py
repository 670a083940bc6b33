"""Running a fixed-shape function over arrays of any length."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def map_batches(fn: Callable[[np.ndarray], Any], array: np.ndarray, batch_size: int) -> Any:
    """`fn` over `array` in batches of one shape (the last one zero-padded, so one compiled
    program serves every batch); its output pytree's leaves concatenated and trimmed to length."""
    count = len(array)
    padding = np.zeros((-count % batch_size, *array.shape[1:]), array.dtype)
    padded = np.concatenate([array, padding])
    parts = [fn(padded[i : i + batch_size]) for i in range(0, len(padded), batch_size)]
    return jax.tree.map(
        lambda *leaves: np.concatenate([np.asarray(x) for x in leaves])[:count], *parts
    )
