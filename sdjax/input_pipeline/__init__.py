"""sdjax training data: the record schema (`schema`) and the tf.data reader."""

from sdjax.input_pipeline.iterator_state import (
    IteratorHandler,
    IteratorRestore,
    IteratorSave,
    PipelineIterator,
)
from sdjax.input_pipeline.pipeline import (
    build_dataset,
    default_config,
    make_iterator,
    output_signature,
)
from sdjax.input_pipeline.reasons import DataError, Reason

__all__ = [
    "DataError",
    "IteratorHandler",
    "IteratorRestore",
    "IteratorSave",
    "PipelineIterator",
    "Reason",
    "build_dataset",
    "default_config",
    "make_iterator",
    "output_signature",
]
