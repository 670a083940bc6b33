"""Encoder inputs from images, as transformers' image processors make them: the shortest side
resized (bicubic, PIL), a centre crop, scaled to [0, 1] and normalised with a mean and std.

DINO: resize 256, crop 224, ImageNet mean/std (DreamBooth's protocol); CLIP: resize 224, crop
224, CLIP's mean/std (`CLIPImageProcessor`). The numbers live in `configs/dreambench.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

MAX_VALUE = 255.0


def resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    """`image` scaled so its shorter side is `size` (the longer side rounded down, as
    transformers' `get_resize_output_image_size`), bicubic."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, Image.Resampling.BICUBIC)


def centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The central (size, size) window of (H, W, C) pixels (top-left rounded down)."""
    height, width = pixels.shape[:2]
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
    top, left = (height - size) // 2, (width - size) // 2
    return pixels[top : top + size, left : left + size]


def encoder_input(
    image: Image.Image, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """(crop, crop, 3) float32: resized, centre-cropped, scaled to [0, 1] and normalised."""
    resized = np.asarray(resize_shortest_side(image.convert("RGB"), resize), np.float32)
    unit = centre_crop(resized, crop) / MAX_VALUE
    return ((unit - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
