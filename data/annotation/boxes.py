"""Box arithmetic of the detection step: corner boxes and non-maximum suppression."""

from __future__ import annotations

import numpy as np


def corners(centre_boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) normalised centre x, y, width, height -> pixel x0, y0, x1, y1 clipped to the image."""
    cx, cy, w, h = np.moveaxis(np.asarray(centre_boxes, np.float32), -1, 0)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    scale = np.asarray([width, height, width, height], np.float32)
    return np.clip(boxes * scale, 0.0, scale)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (4,) box with each of (N, 4) boxes."""
    top_left = np.maximum(box[:2], others[:, :2])
    bottom_right = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0.0, None), -1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], -1)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first: a box is
    dropped when its IoU with a kept, better box exceeds the threshold."""
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    kept = []
    while order:
        best, *rest = order
        kept.append(best)
        overlaps = iou(boxes[best], boxes[rest]) if rest else np.zeros(0)
        order = [i for i, o in zip(rest, overlaps, strict=True) if o <= threshold]
    return np.asarray(kept, np.int64)
