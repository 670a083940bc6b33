"""Where a built dataset's record shards lie, without TensorFlow: a finished stage is found, and
a reader pointed at it, before (or without) loading the builder."""

from __future__ import annotations

from pathlib import Path

DATASET_NAME = "sdd"
VERSION = "1.0.0"


def shard_pattern(data_dir: str | Path, split: str = "train") -> str:
    """The glob of a split's record shards under a builder's `data_dir`."""
    return str(Path(data_dir) / DATASET_NAME / VERSION / f"{DATASET_NAME}-{split}.tfrecord-*")


def shard_files(data_dir: str | Path, split: str = "train") -> list[str]:
    """The record shards of a built split, in order."""
    pattern = Path(shard_pattern(data_dir, split))
    return sorted(str(p) for p in pattern.parent.glob(pattern.name))
