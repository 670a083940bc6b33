"""Numpy iterator over the pipeline, and its state as an item of an orbax checkpoint.

The tf.data iterator's state (file positions, shuffle buffer, running skip counts, prefetched
batches) is written with `tf.train.Checkpoint`, one file set per process, inside the item's
directory; restoring it makes the iterator continue exactly where the saved one stood.

    manager.save(step, args=ocp.args.Composite(state=..., data=IteratorSave(iterator)))
    manager.restore(step, args=ocp.args.Composite(state=..., data=IteratorRestore(iterator)))
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
from etils import epath

from sdjax.input_pipeline.reasons import NUM_REASONS, DataError, Reason, describe_counts

# Per-example keys that carry bookkeeping, not training data.
_FILE, _RECORD, _REASON, _COUNTS = "_file", "_record", "_reason", "_counts"


class PipelineIterator:
    """Yields dict batches of numpy arrays; `tf_iterator` is the state to checkpoint.

    `stats` counts the records skipped, by reason, up to the last example delivered (so skips after
    it, at the very end of a finite stream, are not seen). In strict mode a bad record raises
    `DataError` naming its file and record index; iteration may go on after it.
    """

    def __init__(self, dataset: tf.data.Dataset, strict: bool):
        self.tf_iterator = iter(dataset)
        self.strict = strict
        self._counts = np.zeros([NUM_REASONS], np.int64)
        self._ahead: dict[str, tf.Tensor] | None = None

    def __iter__(self) -> PipelineIterator:
        return self

    def read_ahead(self) -> None:
        """Reads the next batch now and keeps it for `__next__`: a restored state that does not
        fit this pipeline raises `IncompatibleInputState` here, not at the first training step."""
        if self._ahead is None:
            try:
                self._ahead = next(self.tf_iterator)
            except tf.errors.InvalidArgumentError as error:
                first_line = str(error.message).splitlines()[0]
                raise IncompatibleInputState(
                    f"the saved input position does not fit this reader: {first_line}"
                ) from None

    def __next__(self) -> dict[str, np.ndarray]:
        ahead, self._ahead = self._ahead, None
        raw = ahead if ahead is not None else next(self.tf_iterator)
        batch = {k: v.numpy() for k, v in raw.items()}
        self._counts = batch[_COUNTS][-1]
        reasons = batch[_REASON]
        if self.strict and np.any(reasons != Reason.OK):
            i = int(np.flatnonzero(reasons != Reason.OK)[0])
            raise DataError(
                f"{batch[_FILE][i].decode()}: record {int(batch[_RECORD][i])}: "
                f"{Reason(int(reasons[i])).name.lower()}"
            )
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    @property
    def stats(self) -> dict[str, int]:
        """`{reason: records skipped}` since the start of the stream (nonzero reasons only)."""
        return describe_counts(self._counts)


class IncompatibleInputState(ValueError):
    """A saved input position written by a pipeline of another layout (e.g. an older reader)."""


class IteratorHandler(ocp.CheckpointHandler):
    """Saves and restores a `PipelineIterator`'s tf.data state in an orbax checkpoint item."""

    def save(self, directory: epath.Path, args: IteratorSave) -> None:
        tf.train.Checkpoint(iterator=args.iterator.tf_iterator).write(_prefix(directory))

    def restore(self, directory: epath.Path, args: IteratorRestore) -> PipelineIterator:
        prefix = _prefix(directory)
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(f"no input pipeline state for this process at {prefix}")
        tf.train.Checkpoint(iterator=args.iterator.tf_iterator).read(prefix).assert_consumed()
        return args.iterator


def _prefix(directory: epath.Path) -> str:
    """Checkpoint prefix of this process's iterator inside the item directory."""
    return str(directory / f"process_{jax.process_index()}-of-{jax.process_count()}")


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
    """Save the state of `iterator`."""

    iterator: PipelineIterator


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
    """Restore saved state into `iterator` (built with the same config) and return it."""

    iterator: PipelineIterator
