"""Metrics sinks: WORKDIR/metrics.jsonl, TensorBoard scalars and images.

TensorBoard events are written with `tf.summary`: TensorFlow is loaded by the input pipeline
anyway, whereas tensorboardX imports PyTorch when it is installed (seconds of start-up).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf


class MetricsWriter:
    """Appends one JSON line per logged step and mirrors the scalars to TensorBoard."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = (
            tf.summary.create_file_writer(str(Path(workdir) / "tensorboard")) if enabled else None
        )

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with self._tb.as_default(step=int(step)):
            for name, value in scalars.items():
                tf.summary.scalar(name, float(value))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """images: name → (H, W, 3) uint8."""
        if not self.enabled:
            return
        with self._tb.as_default(step=int(step)):
            for name, image in images.items():
                tf.summary.image(name, np.asarray(image, np.uint8)[None])
        self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drops records past `step` (a resumed run rewrites the steps after its checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
