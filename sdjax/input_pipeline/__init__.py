"""sdjax training data: the record schema (`schema`) and the tf.data reader.

The names below load their modules (and TensorFlow) on first use, so that importing
`sdjax.input_pipeline.config` for a run config stays fast.
"""

from sdjax.lazy import lazy_attributes

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
__getattr__ = lazy_attributes(__name__, {name: f"{__name__}.{m}" for name, m in _EXPORTS.items()})
