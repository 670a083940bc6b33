"""A preemption as a scheduler delivers it, at a chosen step: the real input pipeline, with
SIGTERM sent to this process as it hands out the batch of step `at` (1-based)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from ml_collections import ConfigDict

from sdjax.input_pipeline import pipeline
from sdjax.input_pipeline.iterator import PipelineIterator


class SignallingBatches:
    """`inner`, sending SIGTERM to this process when its `at`-th batch is drawn."""

    def __init__(self, inner: PipelineIterator, at: int):
        self.inner, self.at, self.count = inner, at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __next__(self) -> dict:
        batch = next(self.inner)
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch


def sigterm_at_step(at: int) -> Callable[[ConfigDict], SignallingBatches]:
    """A `make_batches` for `trainer.train` whose process receives SIGTERM during step `at`."""
    return lambda data: SignallingBatches(pipeline.make_iterator(data), at)
