"""Mask decoders of the input formats: COCO polygons and RLE, instance-index and binary PNGs.

Every decoder returns a boolean (H, W) array and raises `MaskError` on input it cannot decode.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# COCO compressed RLE: each count is written in 5-bit chunks, least significant first, as
# characters from "0" (48); 0x20 marks "more chunks follow", 0x10 in the last chunk is the sign.
# From the fourth count on, the value stored is the difference to the count two places back.
_RLE_CHAR_OFFSET = 48
_RLE_CHUNK_BITS = 5
_RLE_CHUNK_MASK = 0x1F
_RLE_MORE = 0x20
_RLE_SIGN = 0x10
_RLE_DELTA_FROM = 3


class MaskError(ValueError):
    """A mask annotation that cannot be decoded."""


def _numbers(values: object, dtype: type, what: str) -> np.ndarray:
    """A flat array of numbers, or `MaskError` naming what was malformed."""
    if not isinstance(values, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise MaskError(f"{what} must be a list of numbers, got {values!r:.80}")
    return np.asarray(values, dtype)


def rasterize_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Union of COCO polygons (each a flat x0, y0, x1, y1, ... list in pixels)."""
    if not polygons:
        raise MaskError("no polygon")
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = _numbers(polygon, np.float64, "polygon")
        if len(points) < 6 or len(points) % 2 or not np.isfinite(points).all():
            raise MaskError(f"a polygon needs 3 or more finite x, y pairs, got {polygon!r}")
        points = points.reshape(-1, 2)
        draw.polygon([tuple(p) for p in points], fill=1, outline=1)
    return np.asarray(canvas, bool)


def decode_rle_counts(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Uncompressed COCO RLE: alternating run lengths, zeros first, column-major pixel order."""
    runs = _numbers(counts, np.int64, "RLE counts")
    if (runs < 0).any():
        raise MaskError("RLE counts must be non-negative")
    if runs.sum() != height * width:
        raise MaskError(f"RLE counts cover {runs.sum()} pixels, the mask has {height}x{width}")
    values = (np.arange(len(runs)) % 2).astype(bool)
    return np.repeat(values, runs).reshape(width, height).T


def decode_rle_string(text: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string."""
    counts: list[int] = []
    value = shift = 0
    for char in text:
        chunk = ord(char) - _RLE_CHAR_OFFSET
        if not 0 <= chunk < 2 * _RLE_MORE:
            raise MaskError(f"character {char!r} cannot occur in a compressed RLE string")
        value |= (chunk & _RLE_CHUNK_MASK) << shift
        shift += _RLE_CHUNK_BITS
        if chunk & _RLE_MORE:
            continue
        if chunk & _RLE_SIGN:
            value -= 1 << shift
        if len(counts) >= _RLE_DELTA_FROM:
            value += counts[-2]
        counts.append(value)
        value = shift = 0
    if shift:
        raise MaskError("compressed RLE string ends in the middle of a count")
    return counts


def decode_coco_segmentation(segmentation: object, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation`: polygon list, uncompressed RLE or compressed RLE.

    Polygons are drawn at the given size; an RLE carries its own `size` [height, width].
    """
    if isinstance(segmentation, list):
        return rasterize_polygons(segmentation, height, width)
    if isinstance(segmentation, dict) and {"counts", "size"} <= segmentation.keys():
        size = _numbers(segmentation["size"], np.int64, "RLE size")
        if size.shape != (2,) or (size <= 0).any():
            raise MaskError(f"RLE size {segmentation['size']!r} is not [height, width]")
        rle_height, rle_width = (int(v) for v in size)
        counts = segmentation["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if isinstance(counts, str):
            counts = decode_rle_string(counts)
        return decode_rle_counts(counts, rle_height, rle_width)
    raise MaskError(f"unknown segmentation of type {type(segmentation).__name__}")


def _single_channel(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if len(image.getbands()) != 1:
                raise MaskError(f"expected a single-channel PNG, got mode {image.mode}")
            return np.asarray(image)
    except (OSError, SyntaxError) as error:
        raise MaskError(f"cannot read the mask image: {error}") from error


def decode_index_png(data: bytes) -> np.ndarray:
    """An instance-index map (palette or grey PNG): the integer value of every pixel."""
    return _single_channel(data)


def decode_binary_png(data: bytes) -> np.ndarray:
    """A single-channel mask image, nonzero = inside."""
    return _single_channel(data) > 0
