"""Cutting a subject out of its photo with Segment Anything (a transformers `SamModel` folder).

Prompted as the reference code prompts it at inference: the subject's box plus four positive
points at the inner thirds of the box, one mask (no multimask output), holes filled. PyTorch and
transformers are imported only when a segmenter is loaded, so sampling without one needs neither.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from sdjax.weights.subject_diffusion import CONFIG_FILE

# The reference code's inner points: the box split in thirds along each side, the four inner
# corners of that grid, all labelled "foreground".
INNER_FRACTIONS = (1, 2)
THIRDS = 3
FOREGROUND = 1
SAM_MODEL_TYPES = ("sam",)


class ModelFolderError(ValueError):
    """A model folder that is missing, or holds a model of another type."""


def model_type(folder: str | Path, allowed: Collection[str], role: str) -> str:
    """The `model_type` of a transformers folder, or `ModelFolderError` naming what was expected."""
    config = Path(folder) / "config.json"
    try:
        found = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise ModelFolderError(
            f"the {role} folder {str(folder)!r} has no readable config.json ({error}); expected a "
            f"transformers folder of model type {' or '.join(allowed)}"
        ) from None
    if found not in allowed:
        raise ModelFolderError(
            f"the {role} folder {str(folder)!r} holds a {found!r} model; expected model type "
            f"{' or '.join(allowed)}"
        )
    return found


def inner_points(box: Sequence[float]) -> np.ndarray:
    """(4, 2) pixel points x, y: the box's corner plus one and two floored thirds of its sides."""
    x0, y0, x1, y1 = (float(v) for v in box)
    step_x, step_y = (x1 - x0) // THIRDS, (y1 - y0) // THIRDS
    return np.asarray(
        [(x0 + i * step_x, y0 + j * step_y) for j in INNER_FRACTIONS for i in INNER_FRACTIONS],
        np.float32,
    )


def torch_device(device: str | None) -> str:
    """The given device, else the GPU when there is one, else the CPU."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class SamSegmenter:
    """Masks from a local transformers `SamModel` folder, prompted with boxes (and points)."""

    def __init__(self, folder: str | Path, device: str | None = None):
        from transformers import SamModel, SamProcessor

        model_type(folder, SAM_MODEL_TYPES, "segmenter")
        self.folder = str(folder)
        self.device = torch_device(device)
        self.processor = SamProcessor.from_pretrained(folder)
        self.model = SamModel.from_pretrained(folder).to(self.device).eval()

    def masks(
        self, pixels: np.ndarray, boxes: np.ndarray, points: np.ndarray | None = None
    ) -> np.ndarray:
        """(N, H, W) bool masks of an (H, W, 3) uint8 image for N pixel boxes x0, y0, x1, y1,
        each optionally with (N, P, 2) positive points."""
        import torch

        prompts: dict[str, Any] = {"input_boxes": [np.asarray(boxes, np.float32).tolist()]}
        if points is not None:
            prompts["input_points"] = [np.asarray(points, np.float32).tolist()]
            prompts["input_labels"] = [np.full(points.shape[:2], FOREGROUND).tolist()]
        inputs = self.processor(images=pixels, return_tensors="pt", **prompts).to(self.device)
        with torch.no_grad():
            outputs = self.model(**inputs, multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.cpu(),
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
        )[0]
        return masks[:, 0].numpy().astype(bool)

    def __call__(self, pixels: np.ndarray, box: Sequence[float]) -> np.ndarray:
        """The (H, W) bool mask of the subject in a normalised box, holes filled."""
        height, width = pixels.shape[:2]
        scaled = np.asarray(box, np.float32) * np.asarray(
            [width, height, width, height], np.float32
        )
        mask = self.masks(pixels, scaled[None], inner_points(scaled)[None])[0]
        return ndimage.binary_fill_holes(mask)


def export_segmenter(export_dir: str | Path) -> str:
    """The segmenter folder an export records (`sampling.segmenter`), or "" when none."""
    config = Path(export_dir) / CONFIG_FILE
    if not config.is_file():
        return ""
    return json.loads(config.read_text()).get("sampling", {}).get("segmenter", "") or ""
