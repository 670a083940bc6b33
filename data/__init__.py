"""Dataset builders of sdjax training records (schema: `sdjax.input_pipeline.schema`)."""

from data.build_sample import build_sample_records, sample_source
from data.sdd_builder import build, shard_files

__all__ = ["build", "build_sample_records", "sample_source", "shard_files"]
