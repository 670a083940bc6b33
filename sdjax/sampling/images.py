"""Sampled arrays to PIL images, and a grid of them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """(N, H, W, 3) float in [0, 1] → N RGB images (rounded to uint8)."""
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Images of one size tiled row-major on a grid (about square when `columns` is None)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid
