"""Subjects for sampling: reading their images and masks, and the reference image the encoder sees.

At inference there is no random augmentation: the subject is cut out (by its mask, else by its
box), pasted on white, padded to a square with white and resized to the image encoder's size, as
training prepares its white-background subject images (`sdjax.input_pipeline.augment`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sdjax.images import upright
from sdjax.sampling.errors import SamplingInputError
from sdjax.sampling.layout import Box, check_box

ImageLike = str | Path | Image.Image | np.ndarray
WHITE = 255
MASK_THRESHOLD = 0.5  # mask pixels (scaled to [0, 1]) above this are the subject
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)
# (H, W, 3) uint8 pixels and a normalised box -> the (H, W) bool mask of the subject in it.
Segmenter = Callable[[np.ndarray, Box], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Subject:
    """One subject of a generated image.

    image: a path, PIL image or (H, W, 3|4) array (uint8, or float in [0, 1]). An alpha channel
      is the mask when no `mask` is given.
    mask: segmentation of the subject in `image` (path, PIL image or (H, W) bool, uint8 or float
      array, same size): everything outside is painted white.
    box: the subject within its own image, normalised (x0, y0, x1, y1); the reference image is
      cut to it (else to the mask's bounding box, else the whole image is kept).
    label: the entity word of its prompt clause (", the {label} is sks"); by default the stem of
      the image's file name.
    layout: where the subject goes in the OUTPUT image, normalised (x0, y0, x1, y1). Without one,
      a lone subject keeps its own box (`box`, or its mask's bounding box); otherwise a random box.
    """

    image: ImageLike
    mask: ImageLike | None = None
    box: Box | None = None
    label: str | None = None
    layout: Box | None = None

    @property
    def name(self) -> str:
        """How error messages refer to this subject."""
        if isinstance(self.image, str | Path):
            return str(self.image)
        return repr(self.label) if self.label else "an in-memory subject image"

    def resolved_label(self) -> str:
        if self.label:
            return self.label
        if isinstance(self.image, str | Path):
            return Path(self.image).stem
        raise SamplingInputError(f"{self.name} needs a label (the word naming it in the prompt)")


def _open(source: ImageLike, what: str) -> Image.Image:
    """A loaded PIL image from a path, PIL image or array; unreadable input names itself."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        if source.dtype == bool or np.issubdtype(source.dtype, np.floating):
            source = np.round(np.clip(source, 0.0, 1.0) * WHITE).astype(np.uint8)
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise SamplingInputError(
                f"{what} array must be uint8, bool or float in [0, 1], (H, W) or (H, W, C); "
                f"got {source.dtype} {source.shape}"
            )
        return Image.fromarray(source)
    try:
        with Image.open(source) as image:
            image.load()
            return upright(image)  # as displayed: the box and mask refer to that
    except (OSError, UnidentifiedImageError) as error:
        raise SamplingInputError(f"cannot read {what} {str(source)!r}: {error}") from None


class SegmenterNotice(UserWarning):
    """A subject goes to the image encoder uncut: it has no mask and there is no segmenter."""


def segment(subject: Subject, pixels: np.ndarray, segmenter: Segmenter | None) -> np.ndarray | None:
    """The segmenter's mask of a subject given without one, prompted with its box (else the
    whole image); None, with a one-line notice, when there is no segmenter."""
    if segmenter is None:
        warnings.warn(
            f"{subject.name} has no mask and no segmenter is configured: the image encoder sees "
            "its box with the background (give a mask, or a segmenter: sample.py --segmenter)",
            SegmenterNotice,
            stacklevel=1,  # one location: repeated notices for one subject show once
        )
        return None
    box = WHOLE_IMAGE if subject.box is None else check_box(subject.box, f"box of {subject.name}")
    mask = np.asarray(segmenter(pixels, box), bool)
    if not mask.any():
        raise SamplingInputError(f"the segmenter found nothing in the box {box} of {subject.name}")
    return mask


def read_subject(
    subject: Subject, segmenter: Segmenter | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The subject's RGB pixels (H, W, 3) uint8 and its mask (H, W) bool, or None.

    The mask is the given one, else the image's alpha channel, else the segmenter's cut-out.
    """
    image = _open(subject.image, "subject image")
    alpha = None
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3] > WHITE * MASK_THRESHOLD
    pixels = np.asarray(image.convert("RGB"))
    if subject.mask is None:
        return pixels, alpha if alpha is not None else segment(subject, pixels, segmenter)
    mask_image = _open(subject.mask, f"mask of {subject.name}")
    if mask_image.size != image.size:
        width, height = mask_image.size
        raise SamplingInputError(
            f"mask of {subject.name} is {width}x{height} but its image is "
            f"{image.size[0]}x{image.size[1]} (width x height); they must match"
        )
    mask = np.asarray(mask_image.convert("L")) > WHITE * MASK_THRESHOLD
    return pixels, mask


def mask_box(mask: np.ndarray, name: str) -> tuple[float, float, float, float]:
    """The normalised bounding box of a (H, W) mask's pixels (continuous pixel edges)."""
    rows, columns = np.nonzero(mask)
    if rows.size == 0:
        raise SamplingInputError(f"the mask of {name} is empty")
    height, width = mask.shape
    return (
        columns.min() / width,
        rows.min() / height,
        (columns.max() + 1) / width,
        (rows.max() + 1) / height,
    )


def subject_box(
    subject: Subject, mask: np.ndarray | None
) -> tuple[float, float, float, float] | None:
    """Where the subject sits in its own image: its checked `box`, else its mask's box, else None."""
    if subject.box is not None:
        return check_box(subject.box, f"box of {subject.name}")
    return None if mask is None else mask_box(mask, subject.name)


def cut_out(pixels: np.ndarray, mask: np.ndarray | None, box: Box | None) -> np.ndarray:
    """The subject on white: (h, w, 3) uint8, white outside the mask, cut to the normalised box
    (None: the whole image)."""
    if mask is not None:
        pixels = np.where(mask[..., None], pixels, WHITE).astype(np.uint8)
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = box if box is not None else WHOLE_IMAGE
    return pixels[  # non-empty: x0 < x1 gives floor(x0 * W) < ceil(x1 * W)
        int(np.floor(y0 * height)) : int(np.ceil(y1 * height)),
        int(np.floor(x0 * width)) : int(np.ceil(x1 * width)),
    ]


def reference_image(
    pixels: np.ndarray,
    mask: np.ndarray | None,
    box: Box | None,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """The encoder's view of a subject: (size, size, 3) float32, CLIP-normalised.

    pixels (H, W, 3) uint8; mask (H, W) bool or None; box: normalised (`subject_box`), None for
    the whole image. The `cut_out` is padded to a square with white (centred) and resized
    bilinearly with antialiasing.
    """
    crop = cut_out(pixels, mask, box)
    side = max(crop.shape[:2])
    canvas = np.full((side, side, 3), WHITE, np.uint8)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    canvas[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    resized = Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR)
    unit = np.asarray(resized, np.float32) / WHITE
    return ((unit - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
