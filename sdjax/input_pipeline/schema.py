"""TFRecord schema of sdjax training data, version 1: one `tf.train.Example` per image.

Every builder writes records through `encode_example`; the reader parses them with `FEATURE_SPEC`.
Lists are flat: `entities/box` holds 4 floats per entity, `entities/clause_ids` the clauses of all
entities one after the other, split by `entities/clause_length`. An entity annotated with a box
only has an empty `entities/mask` entry (`NO_MASK`); the reader's `data.boxes_without_masks`
decides what stands in for its mask.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from PIL import Image

from sdjax.tokenizer import PLACEHOLDER_ID

SCHEMA_VERSION = 1
IMAGE_FORMATS = ("jpeg", "png")
MASK_INSIDE = 255
# The `entities/mask` entry of an entity annotated with a box only (no PNG is ever empty).
NO_MASK = b""


@dataclasses.dataclass(frozen=True)
class Field:
    """One feature of the record: its name, value type and whether it holds exactly one value."""

    name: str
    dtype: tf.dtypes.DType
    scalar: bool


FIELDS: tuple[Field, ...] = (
    Field("schema_version", tf.int64, True),
    Field("image/key", tf.string, True),
    Field("image/encoded", tf.string, True),
    Field("image/format", tf.string, True),
    Field("image/height", tf.int64, True),
    Field("image/width", tf.int64, True),
    Field("caption", tf.string, True),
    Field("caption/ids", tf.int64, False),
    Field("entities/label", tf.string, False),
    Field("entities/score", tf.float32, False),
    Field("entities/box", tf.float32, False),
    Field("entities/mask", tf.string, False),
    Field("entities/clause_ids", tf.int64, False),
    Field("entities/clause_length", tf.int64, False),
)


def _parse_feature(field: Field) -> tf.io.FixedLenFeature | tf.io.FixedLenSequenceFeature:
    if field.scalar:
        return tf.io.FixedLenFeature([], field.dtype)
    return tf.io.FixedLenSequenceFeature([], field.dtype, allow_missing=True)


# For `tf.io.parse_single_example`: scalars parse to shape (), lists to shape (n,).
FEATURE_SPEC = {field.name: _parse_feature(field) for field in FIELDS}

# Optional: VAE posterior moments of the reader's centred crop (`data/cache_latents.py`), float16
# bytes of shape (R/f, R/f, 2C), mean channels then log-variance channels, and that R.
LATENT_MOMENTS = "latents/moments"
LATENT_RESOLUTION = "latents/resolution"
LATENT_DTYPE = np.float16
LATENT_FEATURE_SPEC = {
    LATENT_MOMENTS: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LATENT_RESOLUTION: tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def with_latents(record: bytes, moments: np.ndarray, resolution: int) -> bytes:
    """A serialized record with cached latents (replacing any it held)."""
    example = tf.train.Example.FromString(record)
    features = example.features.feature
    features[LATENT_MOMENTS].bytes_list.value[:] = [moments.astype(LATENT_DTYPE).tobytes()]
    features[LATENT_RESOLUTION].int64_list.value[:] = [resolution]
    return example.SerializeToString()


@dataclasses.dataclass(frozen=True)
class Entity:
    """One annotated subject of an image."""

    label: str
    box: tuple[float, float, float, float]  # pixels: x0, y0, x1, y1
    mask_png: bytes | None  # single-channel PNG, image-sized, nonzero = inside; None: box only
    clause_ids: tuple[int, ...]  # ids of ", the {label} is sks"
    score: float = 1.0

    def __post_init__(self) -> None:
        if len(self.box) != 4:
            raise ValueError(f"entity {self.label!r}: box {self.box} must have 4 numbers")
        if not self.clause_ids or self.clause_ids[-1] != PLACEHOLDER_ID:
            raise ValueError(
                f"entity {self.label!r}: clause ids {self.clause_ids} must end with {PLACEHOLDER_ID}"
            )


@dataclasses.dataclass(frozen=True)
class ImageExample:
    """Everything one record holds, as Python values."""

    key: str
    image_encoded: bytes
    image_format: str
    height: int
    width: int
    caption: str
    caption_ids: tuple[int, ...]
    entities: tuple[Entity, ...]

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"{self.key}: image format {self.image_format!r} not in {IMAGE_FORMATS}"
            )
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"{self.key}: image size {self.height}x{self.width} is empty")


def example_features(example: ImageExample) -> dict[str, list]:
    """The record's features as flat lists, keyed by the names of `FIELDS`."""
    entities = example.entities
    return {
        "schema_version": [SCHEMA_VERSION],
        "image/key": [example.key.encode("utf-8")],
        "image/encoded": [example.image_encoded],
        "image/format": [example.image_format.encode("utf-8")],
        "image/height": [example.height],
        "image/width": [example.width],
        "caption": [example.caption.encode("utf-8")],
        "caption/ids": list(example.caption_ids),
        "entities/label": [e.label.encode("utf-8") for e in entities],
        "entities/score": [e.score for e in entities],
        "entities/box": [float(v) for e in entities for v in e.box],
        "entities/mask": [NO_MASK if e.mask_png is None else e.mask_png for e in entities],
        "entities/clause_ids": [i for e in entities for i in e.clause_ids],
        "entities/clause_length": [len(e.clause_ids) for e in entities],
    }


def _tf_feature(dtype: tf.dtypes.DType, values: list) -> tf.train.Feature:
    if dtype == tf.int64:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if dtype == tf.float32:
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def encode_example(example: ImageExample) -> bytes:
    """The serialized `tf.train.Example` of one image; equal inputs give equal bytes."""
    features = example_features(example)
    proto = tf.train.Example(
        features=tf.train.Features(
            feature={f.name: _tf_feature(f.dtype, features[f.name]) for f in FIELDS}
        )
    )
    return proto.SerializeToString(deterministic=True)


def _feature_values(feature: tf.train.Feature) -> list:
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def decode_example_py(data: bytes) -> ImageExample:
    """Parse a serialized record back into an `ImageExample` (for tests and inspection)."""
    proto = tf.train.Example.FromString(data).features.feature
    missing = [f.name for f in FIELDS if f.name not in proto]
    if missing:
        raise ValueError(f"record lacks the features {missing}")
    values = {f.name: _feature_values(proto[f.name]) for f in FIELDS}
    if values["schema_version"] != [SCHEMA_VERSION]:
        raise ValueError(
            f"record has schema version {values['schema_version']}, not {SCHEMA_VERSION}"
        )
    return ImageExample(
        key=values["image/key"][0].decode("utf-8"),
        image_encoded=values["image/encoded"][0],
        image_format=values["image/format"][0].decode("utf-8"),
        height=values["image/height"][0],
        width=values["image/width"][0],
        caption=values["caption"][0].decode("utf-8"),
        caption_ids=tuple(values["caption/ids"]),
        entities=_decode_entities(values),
    )


def _decode_entities(values: Mapping[str, list]) -> tuple[Entity, ...]:
    lengths = values["entities/clause_length"]
    starts = np.cumsum([0, *lengths])
    clause_ids = values["entities/clause_ids"]
    boxes = values["entities/box"]
    return tuple(
        Entity(
            label=label.decode("utf-8"),
            box=tuple(boxes[4 * i : 4 * i + 4]),
            mask_png=mask if mask != NO_MASK else None,
            clause_ids=tuple(clause_ids[starts[i] : starts[i + 1]]),
            score=score,
        )
        for i, (label, mask, score) in enumerate(
            zip(
                values["entities/label"],
                values["entities/mask"],
                values["entities/score"],
                strict=True,
            )
        )
    )


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A boolean (H, W) mask as a single-channel PNG: 255 inside, 0 outside."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, MASK_INSIDE, 0).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    """A record's entity mask as a boolean (H, W) array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")) > 0
