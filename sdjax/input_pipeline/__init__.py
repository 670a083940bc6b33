"""sdjax training data: the record schema (`schema`) and the tf.data reader.

The names below load their modules (and TensorFlow) on first use, so that importing
`sdjax.input_pipeline.config` for a run config stays fast.
"""

import importlib
from typing import Any

_EXPORTS = {
    "IteratorHandler": "iterator_state",
    "IteratorRestore": "iterator_state",
    "IteratorSave": "iterator_state",
    "PipelineIterator": "iterator",
    "build_dataset": "pipeline",
    "default_config": "config",
    "make_iterator": "pipeline",
    "output_signature": "pipeline",
    "DataError": "reasons",
    "Reason": "reasons",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
