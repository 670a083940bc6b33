"""The VAE fit's images, read from sdjax training records with tf.data (`sdjax.training.vae_fit`).

Every `holdout_every`-th record of the sorted files is held out. Images are centre-cropped to a
square and resized (bilinear, antialiased) to `resolution`; training images are also flipped
horizontally at random (a stateless draw per stream position), shuffled with a seed and repeated
forever. `ImageBatches` is checkpointed with the fit's state.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from ml_collections import ConfigDict

from sdjax.input_pipeline import decode, pipeline
from sdjax.input_pipeline.iterator import CheckpointableIterator
from sdjax.input_pipeline.pipeline import as_written


def _square(image: tf.Tensor, resolution: int) -> tf.Tensor:
    """Centre square of a uint8 image resized to `resolution` (bilinear, antialiased), uint8."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    crop = tf.image.crop_to_bounding_box(
        image, (height - side) // 2, (width - side) // 2, side, side
    )
    resized = tf.image.resize(crop, [resolution, resolution], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _decode(serialized: tf.Tensor, resolution: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`(ok, image)` of one record: its image as a `resolution` square, uint8."""
    parsed, features = decode.parse_record(serialized)
    decoded, image = decode.decode_image(features)
    return parsed & decoded, _square(image, resolution)


def split_images(files: list[str], cfg: ConfigDict, held_out: bool) -> tf.data.Dataset:
    """The decoded square uint8 images of one split (every `holdout_every`-th record held out)."""
    pipeline.hide_accelerators_from_tensorflow()
    every = cfg.holdout_every
    records = tf.data.TFRecordDataset(files).enumerate()
    records = records.filter(as_written(lambda i, _: (i % every == 0) == tf.constant(held_out)))
    decoded = records.map(
        as_written(lambda _, record: _decode(record, cfg.resolution)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ok = decoded.filter(as_written(lambda ok, _: ok)).map(as_written(lambda _, image: image))
    return ok.with_options(_options())


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Only `decode.try_apply` looks stateful to the checkpoint check; all randomness is stateless.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return options


def _to_unit_range(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def _flip(index: tf.Tensor, image: tf.Tensor, seed: int) -> tf.Tensor:
    """Horizontally flipped with probability 1/2, drawn from (seed, stream index)."""
    draw = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in([seed, 0], index)
    )
    return tf.cond(draw < 0.5, lambda: image[:, ::-1], lambda: image)


def training_dataset(files: list[str], cfg: ConfigDict) -> tf.data.Dataset:
    """Shuffled, flipped, repeated batches (B, R, R, 3) float32 in [-1, 1] of the training split."""
    images = split_images(files, cfg, held_out=False)
    images = images.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
    flipped = (
        images.repeat()
        .enumerate()
        .map(
            as_written(lambda index, image: _flip(index, image, cfg.seed)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    )
    batches = flipped.batch(cfg.batch_size, drop_remainder=True).map(as_written(_to_unit_range))
    return batches.prefetch(2).with_options(_options())


class ImageBatches(CheckpointableIterator):
    """Numpy batches of a tf.data stream; `tf_iterator` is what the checkpoints save."""

    def __init__(self, dataset: tf.data.Dataset):
        self.tf_iterator = iter(dataset)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        return next(self.tf_iterator).numpy()


def first_images(files: list[str], cfg: ConfigDict, held_out: bool, count: int) -> np.ndarray:
    """Up to `count` unflipped images (N, R, R, 3) float32 in [-1, 1] of a split, in record order."""
    images = split_images(files, cfg, held_out).take(count).map(as_written(_to_unit_range))
    found = [image.numpy() for image in images]
    if not found:
        split = "held-out" if held_out else "training"
        raise ValueError(
            f"no {split} images in {len(files)} files (holdout_every={cfg.holdout_every})"
        )
    return np.stack(found)
