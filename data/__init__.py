"""Dataset builders of sdjax training records (schema: `sdjax.input_pipeline.schema`).

The builders load TensorFlow and tensorflow_datasets, so they are imported on first use: a
finished dataset is found (`data.layout`) without them."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "build": "data.sdd_builder",
    "build_sample_records": "data.build_sample",
    "sample_source": "data.build_sample",
    "shard_files": "data.layout",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
