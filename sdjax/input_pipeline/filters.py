"""Training-time selection of images and entities (SPEC §3), as TensorFlow ops on one record."""

from __future__ import annotations

import math

import ml_collections
import tensorflow as tf

from sdjax import captions, geometry


def near_white_fraction(image: tf.Tensor, threshold: float) -> tf.Tensor:
    """Share of pixels of a (H, W, 3) uint8 image whose every channel exceeds `threshold` of 255."""
    # For integer x: x / 255 > threshold  <=>  x > floor(255 * threshold).
    bright = tf.reduce_all(image > tf.cast(math.floor(255 * threshold), tf.uint8), axis=-1)
    return tf.reduce_mean(tf.cast(bright, tf.float32))


def labels_in_caption(labels: tf.Tensor, caption: tf.Tensor) -> tf.Tensor:
    """(N,) whether each label is one word (no whitespace, as the reference code asks) mentioned
    in the caption by `sdjax.captions`' rule (the record builder's)."""
    one_word = tf.strings.regex_full_match(labels, r"\S+")
    patterns = captions.mention_pattern(
        tf.strings.regex_replace(labels, captions.PUNCTUATION, captions.ESCAPE)
    )

    def found(pattern):
        return tf.strings.regex_full_match(caption, pattern)

    return one_word & tf.map_fn(found, patterns, fn_output_signature=tf.bool)


def box_shape_ok(boxes: tf.Tensor, image_area: tf.Tensor, cfg: ml_collections.ConfigDict):
    """(N,) whether each (N, 4) box's share of the image and its aspect are within the bounds."""
    ratio = geometry.box_area(boxes) / tf.cast(image_area, boxes.dtype)
    aspect = geometry.box_aspect(boxes)
    return (
        (cfg.min_area_ratio < ratio)
        & (ratio < cfg.max_area_ratio)
        & (cfg.min_aspect < aspect)
        & (aspect < cfg.max_aspect)
    )


def entity_candidates(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    labels: tf.Tensor,
    caption: tf.Tensor,
    image_area: tf.Tensor,
    cfg: ml_collections.ConfigDict,
) -> tf.Tensor:
    """(N,) entities passing the filters that need no mask: box share, aspect, score, label."""
    return (
        box_shape_ok(boxes, image_area, cfg)
        & (scores > cfg.min_score)
        & labels_in_caption(labels, caption)
    )


def mask_fills_box(masks: tf.Tensor, boxes: tf.Tensor, min_fill: float) -> tf.Tensor:
    """(N,) whether each entity's (N, H, W) mask covers at least `min_fill` of its box."""
    covered = tf.cast(geometry.mask_pixels_in_boxes(masks, boxes), boxes.dtype)
    return covered / geometry.box_area(boxes) >= min_fill


def label_map(masks: tf.Tensor) -> tf.Tensor:
    """(H, W) int32 label of each pixel from (M, H, W) entity masks: 0 background, entity m is
    m + 1; where masks overlap the later entity wins (as a segmenter's painted label image)."""
    labels = tf.range(1, tf.shape(masks)[0] + 1)[:, None, None] * tf.cast(masks, tf.int32)
    return tf.reduce_max(tf.concat([tf.zeros_like(labels[:1]), labels], axis=0), axis=0)


def label_map_fills_box(
    masks: tf.Tensor,
    boxes: tf.Tensor,
    min_fill: float,
    label_range: tuple[int, int],
) -> tf.Tensor:
    """(N,) the reference code's box check over the image's label map (`label_map(masks)`).

    Within each (truncated) box of (N, 4): the number of distinct labels, background included, is
    within `label_range`; the largest label's pixels, background included, cover at least
    `min_fill` of the box; and the dominant label (the largest but the lowest label present) has
    no more pixels in the whole image than the box's area.
    """
    labels = label_map(masks)
    one_hot = tf.one_hot(labels, tf.shape(masks)[0] + 1, axis=0)  # (M + 1, H, W)
    corners = tf.floor(boxes)
    rows = geometry.index_span(tf.shape(labels)[0], corners[:, 1], corners[:, 3], boxes.dtype)
    columns = geometry.index_span(tf.shape(labels)[1], corners[:, 0], corners[:, 2], boxes.dtype)
    counts = tf.einsum("nh,lhw,nw->nl", rows, one_hot, columns)  # (N, M + 1) pixels per label
    present = counts > 0
    distinct = tf.reduce_sum(tf.cast(present, tf.int32), axis=1)
    area = tf.cast(geometry.box_area(boxes), tf.float32)
    lowest = tf.argmax(tf.cast(present, tf.int32), axis=1, output_type=tf.int32)
    others = tf.where(
        tf.one_hot(lowest, tf.shape(counts)[1], on_value=True, off_value=False), -1.0, counts
    )
    dominant = tf.argmax(others, axis=1, output_type=tf.int32)
    dominant_total = tf.gather(tf.reduce_sum(one_hot, axis=(1, 2)), dominant)
    return (
        (label_range[0] <= distinct)
        & (distinct <= label_range[1])
        & (tf.reduce_max(counts, axis=1) / area >= min_fill)
        & (dominant_total <= area)
    )


def rank_and_select(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    eligible: tf.Tensor,
    max_overlap: float,
    max_subjects: int,
) -> tf.Tensor:
    """Indices of the kept entities, best score first (at most `max_subjects`).

    Walking the eligible entities by decreasing score, one is dropped when it overlaps an already
    kept one by more than `max_overlap` of the smaller box.
    """
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    ranked_boxes = tf.gather(boxes, order)
    kept = geometry.greedy_non_overlapping(
        tf.gather(eligible, order), geometry.overlap_over_smaller(ranked_boxes), max_overlap
    )
    return tf.boolean_mask(order, geometry.first_k(kept, max_subjects))


def crop_box_ok(boxes_px: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
    """(N,) whether each box, in pixels of the cropped target, is large enough and not too thin."""
    aspect = geometry.box_aspect(boxes_px)
    return (
        (geometry.box_area(boxes_px) > cfg.min_box_area_px)
        & (cfg.min_aspect < aspect)
        & (aspect < cfg.max_aspect)
    )
