"""The record files a `data.file_pattern` names. Local globs need no TensorFlow (a cached stage is
checked without it); patterns with a scheme (`gs://...`) go through `tf.io.gfile`."""

from __future__ import annotations

import glob

SCHEME_SEPARATOR = "://"


def _matches(pattern: str) -> list[str]:
    if SCHEME_SEPARATOR in pattern:
        import tensorflow as tf  # noqa: PLC0415 (only remote file systems need it)

        return tf.io.gfile.glob(pattern)
    return glob.glob(pattern)


def list_files(pattern: str) -> list[str]:
    """Sorted TFRecord files matching comma-separated glob patterns."""
    globs = [p.strip() for p in pattern.split(",") if p.strip()]
    files = sorted({f for g in globs for f in _matches(g)})
    if not files:
        raise FileNotFoundError(f"no file matches data.file_pattern {pattern!r}")
    return files
