"""Console warnings for records the reader skips as bad input, naming the file and the reason.

The skip counts go to the metrics (`data/skipped_*`); these warnings say where to look: one per
file and reason (with the first record skipped), and after `MAX_NAMED` of them one last line, so
that a damaged data set cannot flood the console. The warning is raised from inside the tf.data
pipeline (`tf.py_function` in the filter), which adds no state to the iterator checkpoint.
"""

from __future__ import annotations

import logging
import threading

import tensorflow as tf

from sdjax.input_pipeline.reasons import BAD_INPUT_MEANING, Reason

logger = logging.getLogger("sdjax.input_pipeline")
MAX_NAMED = 20


class SkipWarnings:
    """Warns once per (file, reason) of a skipped bad record; thread-safe (tf.data calls it from
    its own threads)."""

    def __init__(self, max_named: int = MAX_NAMED):
        self.max_named = max_named
        self._named: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def warn(self, file: str, reason: int, record: int) -> None:
        with self._lock:
            if (file, reason) in self._named or len(self._named) > self.max_named:
                return
            self._named.add((file, reason))
            named = len(self._named)
        if named > self.max_named:
            logger.warning(
                "more records skipped as bad input: files and reasons past the first %d are only "
                "counted (data/skipped_* in the metrics)",
                self.max_named,
            )
            return
        code = Reason(reason)
        logger.warning(
            "%s: record %d skipped, %s: %s; further records of this file skipped for this reason "
            "are only counted",
            file,
            record,
            code.name.lower(),
            BAD_INPUT_MEANING[code],
        )

    def in_graph(self, file: tf.Tensor, reason: tf.Tensor, record: tf.Tensor) -> tf.Tensor:
        """A scalar True once `warn` has run on the tensors (a data dependency for the filter)."""

        def call(f: tf.Tensor, r: tf.Tensor, n: tf.Tensor) -> bool:
            self.warn(f.numpy().decode("utf-8", "replace"), int(r), int(n))
            return True

        done = tf.py_function(call, [file, reason, record], tf.bool)
        return tf.ensure_shape(done, [])
