"""Dataset builders of sdjax training records (schema: `sdjax.input_pipeline.schema`).

The builders load TensorFlow and tensorflow_datasets, so they are imported on first use: a
finished dataset is found (`data.layout`) without them."""

from sdjax.lazy import lazy_attributes

_HOMES = {
    "build": "data.sdd_builder",
    "build_sample_records": "data.build_sample",
    "sample_source": "data.build_sample",
    "shard_files": "data.layout",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_attributes(__name__, _HOMES)
