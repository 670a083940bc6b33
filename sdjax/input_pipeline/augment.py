"""Target crop, location and attention masks, and the augmented subject images (SPEC §2).

Randomness comes in as uniform draws made by the caller from each example's stateless seed, so
every function here is a pure function of its inputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import ml_collections
import tensorflow as tf

from sdjax import geometry
from sdjax.input_pipeline import backgrounds

# Uniform draws one subject image consumes, by use.
FLIP, ANGLE, PERSPECTIVE = 0, 1, 2
CORNERS = slice(3, 11)  # 4 corners x (dx, dy) of the random perspective
PLACEMENT = slice(11, 13)  # offset of the subject on a random background
SUBJECT_DRAWS = 13


class Target(NamedTuple):
    """The cropped target image and its subjects, at the training resolution R."""

    image: tf.Tensor  # (R, R, 3) float32 in [-1, 1]
    masks: tf.Tensor  # (K, R, R) bool segmentation masks
    boxes: tf.Tensor  # (K, 4) boxes normalised to the crop, clipped to [0, 1]


def crop_target(
    image: tf.Tensor,
    masks: tf.Tensor,
    boxes: tf.Tensor,
    u: tf.Tensor,
    resolution: int,
    fill_mask_holes: bool,
    contain: tf.Tensor | None = None,
) -> Target:
    """Square crop that keeps every box of `contain` (default: `boxes`) when one exists (else the
    centre square), resized to R.

    image: (H, W, 3) uint8; masks: (K, H, W) bool; boxes: (K, 4) pixels; u: (2,) uniform draws;
    contain: (N, 4) pixel boxes the square must hold (the reference code: every box of the image).
    The image is resized bilinearly with antialiasing, masks by nearest neighbour (then their holes
    filled, as the reference does, when `fill_mask_holes`).
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    contain = boxes if contain is None else contain
    valid = tf.ones(tf.shape(contain)[:1], tf.bool)
    x, y, side, _ = geometry.square_crop_containing(width, height, contain, valid, u)
    square = image[y : y + side, x : x + side]
    pixels = tf.image.resize(square, [resolution, resolution], "bilinear", antialias=True)
    pixels = tf.clip_by_value(pixels / 127.5 - 1.0, -1.0, 1.0)
    rows = y + geometry.nearest_indices(side, resolution)
    columns = x + geometry.nearest_indices(side, resolution)
    resized = tf.gather(tf.gather(masks, rows, axis=1), columns, axis=2)
    if fill_mask_holes:
        resized = geometry.fill_holes(resized)
    return Target(pixels, resized, geometry.crop_boxes(boxes, x, y, side))


def resize_masks(masks: tf.Tensor, size: int, method: str, antialias: bool = False) -> tf.Tensor:
    """(..., R, R) masks resized to (..., size, size) float32."""
    images = tf.cast(masks, tf.float32)[..., None]
    return tf.image.resize(images, [size, size], method, antialias=antialias)[..., 0]


def location_mask(
    boxes: tf.Tensor,
    masks: tf.Tensor,
    valid: tf.Tensor,
    box_only: tf.Tensor,
    mode: str,
    size: int,
) -> tf.Tensor:
    """(size, size, 1): 1 on background, 0 inside any valid subject's box or segmentation mask.

    A cell is inside when its centre is (box mode: inside the normalised box; segmentation mode:
    on a mask pixel, by nearest-neighbour resizing of the (K, R, R) masks, or inside the box of a
    `box_only` (K,) subject, which has no mask of its own).
    """
    if mode == "box":
        background = geometry.background_of_boxes(boxes, valid, size)
    elif mode == "segmentation":
        segments = tf.where(
            box_only[:, None, None],
            tf.cast(geometry.box_regions(boxes, size), tf.float32),
            resize_masks(masks, size, "nearest"),
        )
        inside = segments * tf.cast(valid, tf.float32)[:, None, None]
        background = 1.0 - tf.reduce_max(inside, axis=0)
    else:
        raise ValueError(f"location_mask must be 'box' or 'segmentation', got {mode!r}")
    return background[..., None]


def attention_masks(masks: tf.Tensor, sizes) -> dict[int, tf.Tensor]:
    """{r: (K, r, r)} segmentation masks at the attention-map sizes (antialiased bilinear)."""
    return {r: resize_masks(masks, r, "bilinear", antialias=True) for r in sizes}


def perspective_sampling(u: tf.Tensor, apply: tf.Tensor, size: int, distortion: float):
    """(..., 3, 3) sampling map of a random perspective on a `size` canvas, as torchvision's.

    Each corner moves inward by an integer drawn from [0, int(distortion * size // 2)] per axis
    (from u: (..., 8)); the output's moved corners read the input's corners. Identity where not
    `apply`.
    """
    reach = int(distortion * (size // 2))
    shift = tf.floor(u * (reach + 1))
    last = size - 1.0
    dx, dy = shift[..., 0::2], shift[..., 1::2]
    start_x = tf.constant([0.0, last, last, 0.0])
    start_y = tf.constant([0.0, 0.0, last, last])
    inward = tf.constant([1.0, -1.0, -1.0, 1.0])
    downward = tf.constant([1.0, 1.0, -1.0, -1.0])
    end_points = tf.stack([start_x + inward * dx, start_y + downward * dy], axis=-1) + 0.5
    start_points = tf.broadcast_to(
        tf.stack([start_x, start_y], axis=-1) + 0.5, tf.shape(end_points)
    )
    warp = geometry.homography_from_points(end_points, start_points)
    identity = tf.eye(3, batch_shape=tf.shape(apply))
    return tf.where(apply[..., None, None], warp, identity)


def augmentation_sampling(u: tf.Tensor, size: int, cfg: ml_collections.ConfigDict) -> tf.Tensor:
    """(..., 3, 3) sampling map of flip, then rotation, then random perspective, on a canvas.

    u: (..., SUBJECT_DRAWS) uniform draws. Output points map back through the perspective, the
    inverse rotation and the flip to the canvas point they read.
    """
    flip = geometry.horizontal_flip(u[..., FLIP] < cfg.flip_probability, size)
    angle = (2.0 * u[..., ANGLE] - 1.0) * math.radians(cfg.max_rotation_degrees)
    turn = geometry.rotation(angle, size / 2, size / 2)
    perspective = perspective_sampling(
        u[..., CORNERS],
        u[..., PERSPECTIVE] < cfg.perspective_probability,
        size,
        cfg.perspective_distortion,
    )
    return flip @ turn @ perspective


def placement_sampling(
    boxes: tf.Tensor, u: tf.Tensor, resolution: int, size: int, background: str
) -> tf.Tensor:
    """(..., 3, 3) map from the subject canvas to the target image, placing the box on the canvas.

    boxes: (..., 4) normalised. White background: the box, padded to a square, fills the canvas.
    Random background (reference): the box is scaled to half the canvas area (each side capped at
    the canvas) and put at a random integer offset drawn from u: (..., 2).
    """
    pixels = boxes * resolution
    width, height = geometry.box_size(pixels)
    if background == "white":
        scale = size / tf.maximum(width, height)
        placed_w, placed_h = width * scale, height * scale
        left, top = (size - placed_w) / 2, (size - placed_h) / 2
    else:
        scale = tf.sqrt(size * size / 2 / (width * height))
        placed_w = tf.minimum(tf.floor(width * scale), size)
        placed_h = tf.minimum(tf.floor(height * scale), size)
        left = tf.floor(u[..., 0] * (size - placed_w + 1))
        top = tf.floor(u[..., 1] * (size - placed_h + 1))
    return (
        geometry.translation(pixels[..., 0], pixels[..., 1])
        @ geometry.scaling(width / placed_w, height / placed_h)
        @ geometry.translation(-left, -top)
    )


def subject_images(
    images: tf.Tensor,
    masks: tf.Tensor,
    boxes: tf.Tensor,
    valid: tf.Tensor,
    u: tf.Tensor,
    noise_seed: tf.Tensor,
    cfg: ml_collections.ConfigDict,
) -> tf.Tensor:
    """(B, S, s, s, 3) CLIP-normalised subject images of a batch; zeros in empty slots.

    images: (B, R, R, 3) targets in [-1, 1]; masks: (B, S, R, R) bool; boxes: (B, S, 4) normalised;
    valid: (B, S); u: (B, S, SUBJECT_DRAWS) uniform draws; noise_seed: (2,) for drawn backgrounds.
    Each subject is cut out by its mask within its box, pasted on the background (`data.background`,
    see `backgrounds`: white; `random`, the next example's target image, or uniform noise in a
    batch of one; or one drawn per subject: noise, procedural, an image of a folder), then flipped,
    rotated and warped in perspective (the canvas outside reads `augment.fill_value`). Image and
    mask are resampled separately and then blended, as the reference does. One bilinear resampling
    per image does placement and augmentation together.
    """
    batch, slots = boxes.shape[0], boxes.shape[1]
    resolution = images.shape[1]
    size = cfg.subject_size
    aug = cfg.augment
    full = tf.constant([0.0, 0.0, 1.0, 1.0])
    boxes = tf.where(valid[..., None], boxes, full)
    source = (images + 1.0) / 2.0

    def per_slot(x: tf.Tensor) -> tf.Tensor:
        """(B, ...) → (B * S, ...): each example's tensor once per subject slot."""
        return tf.repeat(x, slots, axis=0)

    def flat(x: tf.Tensor) -> tf.Tensor:
        """(B, S, ...) → (B * S, ...)."""
        return tf.reshape(x, [batch * slots, *x.shape[2:]])

    backdrop_map = tf.eye(3, batch_shape=[batch * slots])
    if cfg.background == "white":
        backdrop = tf.ones([batch * slots, size, size, 1])
    elif cfg.background == "random" and batch > 1:
        backdrop = per_slot(tf.roll(source, shift=-1, axis=0))
        backdrop_map = geometry.scaling(
            tf.fill([batch * slots], resolution / size), tf.fill([batch * slots], resolution / size)
        )
    elif cfg.background == "random":
        backdrop = per_slot(tf.random.stateless_uniform([batch, size, size, 3], noise_seed))
    elif cfg.background in backgrounds.BACKGROUNDS:
        files = None
        if cfg.background == "folder":
            files = tf.constant(backgrounds.background_files(cfg.background_dir))
        backdrop = flat(
            backgrounds.subject_backgrounds(cfg.background, files, (batch, slots), size, noise_seed)
        )
    else:
        raise ValueError(
            f"data.background={cfg.background!r}; known: {list(backgrounds.BACKGROUNDS)}"
        )
    alpha = tf.cast(masks & geometry.box_regions(boxes, resolution), tf.float32)[..., None]
    canvas = flat(augmentation_sampling(u, size, aug))
    to_target = flat(placement_sampling(boxes, u[..., PLACEMENT], resolution, size, cfg.background))
    to_target = to_target @ canvas
    subject = geometry.warp_images(per_slot(source), to_target, size)
    opacity = geometry.warp_images(flat(alpha), to_target, size)
    behind = geometry.warp_images(backdrop, backdrop_map @ canvas, size, aug.fill_value)
    blended = subject * opacity + behind * (1.0 - opacity)
    pixels = tf.reshape(blended, [batch, slots, size, size, blended.shape[-1]])
    normalised = (pixels - tf.constant(aug.clip_mean)) / tf.constant(aug.clip_std)
    return tf.where(valid[..., None, None, None], normalised, 0.0)
