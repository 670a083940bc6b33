"""The metrics sinks: metrics.jsonl and TensorBoard events that TensorBoard's own reader parses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from sdjax.training.metrics import MetricsWriter


def read_events(logdir) -> dict[str, list]:
    """{tag: [(step, value)]} of every event file under `logdir`, read by TensorFlow's parser."""
    found: dict[str, list] = {}
    for path in sorted(logdir.glob("events.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value))
    return found


def test_scalars_and_images_reach_jsonl_and_tensorboard(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write_scalars(10, {"loss": 0.5, "lr": 1e-3})
    writer.write_scalars(20, {"loss": 0.25, "lr": 2e-3})
    image = np.zeros((6, 8, 3), np.uint8)
    image[:, :4, 0] = 255
    writer.write_images(20, {"samples": image})
    writer.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [
        {"step": 10, "loss": 0.5, "lr": 1e-3},
        {"step": 20, "loss": 0.25, "lr": 2e-3},
    ]
    events = read_events(tmp_path / "tensorboard")
    losses = [(step, float(tf.make_ndarray(v.tensor))) for step, v in events["loss"]]
    assert losses == [(10, pytest.approx(0.5)), (20, pytest.approx(0.25))]
    [(step, value)] = events["samples"]
    assert step == 20
    width, height, png = tf.make_ndarray(value.tensor)  # tf.summary.image's layout
    assert (int(width), int(height)) == (8, 6)
    np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), image)


def test_truncate_after_drops_the_steps_a_resume_rewrites(tmp_path):
    writer = MetricsWriter(tmp_path)
    for step in (10, 20, 30):
        writer.write_scalars(step, {"loss": float(step)})
    writer.truncate_after(20)
    writer.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [10, 20]


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=False)
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_images(1, {"samples": np.zeros((2, 2, 3), np.uint8)})
    writer.close()
    assert not list(tmp_path.iterdir())
