"""Parse and decode one record without ever raising: each step reports whether it succeeded.

TensorFlow's parse and decode ops raise on bad bytes, which would end the whole pipeline. Each
step here runs inside a one-element dataset with `ignore_errors`, so a failure becomes a flag
and a fallback value that the caller turns into a skip reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from sdjax.input_pipeline import exif, schema
from sdjax.tokenizer import CLAUSE_PREFIX_LENGTH, CLAUSE_SUFFIX_LENGTH, PLACEHOLDER_ID


def try_apply(fn: Callable[[Any], Any], value: Any, fallback: Any) -> tuple[tf.Tensor, Any]:
    """`(True, fn(value))`, or `(False, fallback)` when `fn` raises; `fallback` matches fn's output.

    The one-element dataset makes the iterator "stateful" to tf.data's checkpoint check, which the
    pipeline therefore tells to ignore external state (it has none: all randomness is stateless).
    """
    attempt = tf.data.Dataset.from_tensors(value).map(
        tf.autograph.experimental.do_not_convert(lambda v: (True, fn(v)))
    )
    attempt = attempt.ignore_errors()
    either = attempt.concatenate(tf.data.Dataset.from_tensors((False, fallback)))
    return either.take(1).get_single_element()


def _empty_features() -> dict[str, tf.Tensor]:
    """A parsed record of the right structure with empty values."""
    return {
        field.name: tf.zeros([] if field.scalar else [0], field.dtype) for field in schema.FIELDS
    }


def _consistent(features: dict[str, tf.Tensor]) -> tf.Tensor:
    """Whether the record has the schema version and its entity lists agree in length."""
    count = tf.size(features["entities/label"])
    lengths = features["entities/clause_length"]
    clause_ids = features["entities/clause_ids"]
    sizes_agree = tf.reduce_all(
        tf.stack(
            [
                tf.size(features["entities/score"]) == count,
                tf.size(features["entities/mask"]) == count,
                tf.size(features["entities/box"]) == 4 * count,
                tf.size(lengths) == count,
                tf.reduce_sum(lengths) == tf.cast(tf.size(clause_ids), tf.int64),
            ]
        )
    )
    shortest = CLAUSE_PREFIX_LENGTH + CLAUSE_SUFFIX_LENGTH + 1
    # Last id of each clause; the appended -1 absorbs indices of inconsistent lists.
    padded = tf.concat([clause_ids, [-1]], axis=0)
    ends = tf.clip_by_value(tf.cumsum(lengths) - 1, 0, tf.cast(tf.size(clause_ids), tf.int64))
    clauses_ok = tf.reduce_all(lengths >= shortest) & tf.reduce_all(
        tf.gather(padded, ends) == PLACEHOLDER_ID
    )
    return (features["schema_version"] == schema.SCHEMA_VERSION) & sizes_agree & clauses_ok


def parse_record(serialized: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """`(ok, features)` of one serialized record; ok is False for anything but a sound record."""
    parsed_ok, features = try_apply(
        lambda s: tf.io.parse_single_example(s, schema.FEATURE_SPEC), serialized, _empty_features()
    )
    ok = parsed_ok & _consistent(features)
    return ok, features


def unparsed_record() -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """What `parse_record` gives for no record: not ok, and empty features."""
    return tf.constant(False), _empty_features()


def decode_image(features: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """`(ok, image)`: the (H, W, 3) uint8 image as displayed (a JPEG's EXIF orientation applied,
    as the builders do), ok when it decodes to the recorded size."""

    def upright(data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return exif.apply_orientation(image, exif.jpeg_orientation(data))

    decoded_ok, image = try_apply(
        upright,
        features["image/encoded"],
        tf.zeros([1, 1, 3], tf.uint8),
    )
    size = tf.cast(tf.stack([features["image/height"], features["image/width"]]), tf.int32)
    return decoded_ok & tf.reduce_all(tf.shape(image)[:2] == size), image


def decode_masks(encoded: tf.Tensor, height: tf.Tensor, width: tf.Tensor):
    """`(decoded_ok, sized_ok, masks)` for (N,) PNG masks: (N, height, width) bool masks.

    decoded_ok: every mask decodes; sized_ok: every mask is `height` x `width`. A mask of another
    size is cropped or padded to it (only so shapes stay static; the record is then skipped).
    An empty entry (`schema.NO_MASK`, a box-only entity) gives an empty mask.
    """

    def decode_png(data):
        mask = tf.io.decode_png(data, channels=1)
        sized = tf.reduce_all(tf.shape(mask)[:2] == tf.stack([height, width]))
        fitted = tf.image.resize_with_crop_or_pad(mask, height, width)[..., 0] != 0
        return fitted, sized

    def decode_one(data):
        return tf.cond(
            tf.strings.length(data) > 0,
            lambda: decode_png(data),
            lambda: (tf.zeros(tf.stack([height, width]), tf.bool), tf.constant(True)),
        )

    def decode_all(data):
        return tf.map_fn(
            decode_one,
            data,
            fn_output_signature=(
                tf.TensorSpec([None, None], tf.bool),
                tf.TensorSpec([], tf.bool),
            ),
        )

    count = tf.size(encoded)
    fallback = (tf.zeros([count, height, width], tf.bool), tf.zeros([count], tf.bool))
    decoded_ok, (masks, sized) = try_apply(decode_all, encoded, fallback)
    # map_fn cannot stack zero results of unknown shape: no mask is trivially fine.
    return decoded_ok | (count == 0), tf.reduce_all(sized), masks


def decode_latents(
    serialized: tf.Tensor, resolution: int, shape: tuple[int, int, int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """`(ok, moments)`: the cached latent moments of a record as float32 `shape`; ok when the
    record holds them, computed at `resolution` and of that shape."""
    parsed_ok, features = try_apply(
        lambda s: tf.io.parse_single_example(s, schema.LATENT_FEATURE_SPEC),
        serialized,
        {
            schema.LATENT_MOMENTS: tf.constant(b""),
            schema.LATENT_RESOLUTION: tf.constant(0, tf.int64),
        },
    )
    values = tf.io.decode_raw(features[schema.LATENT_MOMENTS], tf.as_dtype(schema.LATENT_DTYPE))
    size = shape[0] * shape[1] * shape[2]
    ok = parsed_ok & (features[schema.LATENT_RESOLUTION] == resolution) & (tf.size(values) == size)
    fitted = tf.reshape(tf.pad(values, [[0, size]])[:size], shape)  # static shape when not ok
    return ok, tf.cast(fitted, tf.float32)
