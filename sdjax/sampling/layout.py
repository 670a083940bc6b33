"""Where subjects go in the output image, and the location mask the UNet sees (SPEC §1, §4).

Boxes are normalised `(x0, y0, x1, y1)` in [0, 1], x right and y down, as in the data pipeline.
A latent cell is inside a box when its centre is (edges included), as in training's box mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.models.grounding import box_cells
from sdjax.sampling.errors import SamplingInputError

Box = Sequence[float]
BoxTuple = tuple[float, float, float, float]


def check_box(box: Box, what: str) -> BoxTuple:
    """`box` as 4 floats, or an error naming it: inside [0, 1] with x0 < x1 and y0 < y1."""
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise SamplingInputError(f"{what} {box!r} is not 4 numbers") from None
    if len(values) != 4:
        raise SamplingInputError(f"{what} {box!r} must have 4 numbers (x0, y0, x1, y1)")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise SamplingInputError(f"{what} {values} lies outside [0, 1] (normalised coordinates)")
    x0, y0, x1, y1 = values
    if not (x0 < x1 and y0 < y1):
        raise SamplingInputError(f"{what} {values} has zero area (needs x0 < x1 and y0 < y1)")
    return values


def check_image_size(height: int, width: int, multiple: int) -> None:
    """Output sizes must be positive multiples of the model's total downsampling."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int | np.integer) or value <= 0 or value % multiple:
            raise SamplingInputError(
                f"{name}={value!r} must be a positive multiple of {multiple} "
                "(VAE factor x UNet downsampling)"
            )


class RandomLayout(NamedTuple):
    """Ranges of random subject boxes: area as a fraction of the subject's share of the image,
    aspect as width over height in pixels (the training filters' ranges)."""

    area: tuple[float, float]
    aspect: tuple[float, float]


def random_box(
    rng: np.random.Generator,
    column: tuple[float, float],
    ranges: RandomLayout,
    pixel_aspect: float,
) -> BoxTuple:
    """A random box inside the vertical strip `column` = (x_start, x_end) of the image.

    pixel_aspect: the image's width over height. Too large a box is clipped to the strip.
    """
    start, end = column
    share = end - start
    area = rng.uniform(*ranges.area) * share
    aspect = math.exp(rng.uniform(math.log(ranges.aspect[0]), math.log(ranges.aspect[1])))
    width = min(math.sqrt(area * aspect / pixel_aspect), share)
    height = min(math.sqrt(area * pixel_aspect / aspect), 1.0)
    x0 = start + rng.uniform(0.0, share - width)
    y0 = rng.uniform(0.0, 1.0 - height)
    return (x0, y0, x0 + width, y0 + height)


def resolve_layouts(
    layouts: Sequence[Box | None],
    own_boxes: Sequence[BoxTuple | None],
    num_images: int,
    seed: int,
    ranges: RandomLayout,
    pixel_aspect: float,
) -> np.ndarray:
    """Output boxes (num_images, S, 4) float32 of S subjects.

    A subject's box is its `layouts` entry (checked); else, for a lone subject, its own box in
    its image; else a random box, drawn per image from (seed, image index). The subjects drawn at
    random share the width in equal strips, in order, one box per strip.
    """
    fixed = [
        check_box(box, f"layout box of subject {i + 1}") if box is not None else None
        for i, box in enumerate(layouts)
    ]
    if len(fixed) == 1 and fixed[0] is None:
        fixed[0] = own_boxes[0]
    drawn = [i for i, box in enumerate(fixed) if box is None]
    boxes = np.zeros((num_images, len(fixed), 4), np.float32)
    for i, box in enumerate(fixed):
        if box is not None:
            boxes[:, i] = box
    for n in range(num_images):
        rng = np.random.default_rng([seed, n])
        for j, i in enumerate(drawn):
            column = (j / len(drawn), (j + 1) / len(drawn))
            boxes[n, i] = random_box(rng, column, ranges, pixel_aspect)
    return boxes


def location_mask(boxes: jax.Array, valid: jax.Array, height: int, width: int) -> jax.Array:
    """(B, height, width, 1) float32: 0 on cells whose centre is inside a valid box, else 1.

    boxes (B, S, 4) normalised; valid (B, S) bool.
    """
    inside = box_cells(boxes, valid, height, width)
    return 1.0 - jnp.any(inside, axis=1).astype(jnp.float32)[..., None]
