"""Numpy iterator over the tf.data pipeline; its position is checkpointed by `iterator_state`."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sdjax.input_pipeline.iterator_state import IncompatibleInputState
from sdjax.input_pipeline.reasons import NUM_REASONS, DataError, Reason, describe_counts

# Per-example keys that carry bookkeeping, not training data.
_FILE, _RECORD, _REASON, _COUNTS = "_file", "_record", "_reason", "_counts"


class CheckpointableIterator:
    """A tf.data iterator (`tf_iterator`) whose position `iterator_state` saves and restores."""

    tf_iterator: tf.data.Iterator

    def write_state(self, prefix: str) -> None:
        """Writes the tf.data iterator's state (`tf.train.Checkpoint`) as the files `prefix.*`."""
        tf.train.Checkpoint(iterator=self.tf_iterator).write(prefix)

    def read_state(self, prefix: str) -> None:
        """Continues from the state that `write_state` wrote as `prefix.*`."""
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(f"no input pipeline state for this process at {prefix}")
        tf.train.Checkpoint(iterator=self.tf_iterator).read(prefix).assert_consumed()


class PipelineIterator(CheckpointableIterator):
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
