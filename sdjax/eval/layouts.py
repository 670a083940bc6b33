"""Where each subject goes in a DreamBench image: the authors' random box or the subject's own.

Boxes are normalised (x0, y0, x1, y1). With several subjects the image is cut into equal vertical
strips, one per subject in order, and each box is drawn inside its strip with x ranges scaled to
it; one subject gets the whole image, as in the authors' scripts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdjax.sampling.layout import BoxTuple

WHOLE_IMAGE: BoxTuple = (0.0, 0.0, 1.0, 1.0)


def in_strip(box: BoxTuple, index: int, count: int) -> BoxTuple:
    """`box` of the whole image squeezed horizontally into strip `index` of `count`."""
    x0, y0, x1, y1 = box
    return ((index + x0) / count, y0, (index + x1) / count, y1)


def random_box(
    rng: np.random.Generator,
    size_px: Sequence[float],
    offset_px: Sequence[float],
    canvas_px: float,
) -> BoxTuple:
    """test.py's box: width and height uniform in `size_px`, top-left corner uniform in
    `offset_px`, in a canvas of `canvas_px`, normalised and clipped to the image."""
    x0, y0 = (rng.uniform(*offset_px) / canvas_px for _ in range(2))
    width, height = (rng.uniform(*size_px) / canvas_px for _ in range(2))
    return (x0, y0, min(x0 + width, 1.0), min(y0 + height, 1.0))


def jittered(rng: np.random.Generator, box: BoxTuple, jitter: float) -> BoxTuple:
    """test_subject.py's layout: `box` moved by up to `jitter` of the image along each axis,
    the move cut short where the box would leave the image (its size is kept)."""
    x0, y0, x1, y1 = box
    dx, dy = rng.uniform(-jitter, jitter, size=2)
    dx, dy = float(np.clip(dx, -x0, 1.0 - x1)), float(np.clip(dy, -y0, 1.0 - y1))
    return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)


def random_layout(
    seed: Sequence[int],
    count: int,
    size_px: Sequence[float],
    offset_px: Sequence[float],
    canvas_px: float,
) -> list[BoxTuple]:
    """One random box per subject, in its strip, drawn from `seed` alone."""
    rng = np.random.default_rng(list(seed))
    return [
        in_strip(random_box(rng, size_px, offset_px, canvas_px), i, count) for i in range(count)
    ]


def own_layout(
    seed: Sequence[int], own_boxes: Sequence[BoxTuple | None], jitter: float
) -> list[BoxTuple]:
    """Each subject's own box (its mask's, else the whole photo) jittered, in its strip."""
    rng = np.random.default_rng(list(seed))
    count = len(own_boxes)
    return [
        in_strip(jittered(rng, box or WHOLE_IMAGE, jitter), i, count)
        for i, box in enumerate(own_boxes)
    ]
