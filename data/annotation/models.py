"""The model steps of the annotation: captions (BLIP, BLIP-2), boxes (Grounding DINO), masks (SAM).

Each step loads its model from a local transformers folder on first use (or in a Beam worker's
`setup`), runs a batch of `Item`s in one call, and returns each item, or why it was dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from data.annotation.boxes import corners, nms
from data.annotation.items import Drop, Dropped, Item
from data.annotation.nouns import counted_caption
from data.annotation.step import ModelStep
from sdjax.sampling.segment import SamSegmenter, model_type, torch_device

CAPTIONERS = {"blip": "BlipForConditionalGeneration", "blip-2": "Blip2ForConditionalGeneration"}
DETECTORS = {"grounding-dino": "GroundingDinoForObjectDetection"}
# The reference code's prompt: the nouns joined by commas, lower case, ending in a full stop.
NOUN_SEPARATOR = ","
PROMPT_END = "."


def load_model(folder: str, classes: dict[str, str], role: str, device: str) -> tuple[Any, Any]:
    """(model in eval mode on the device, processor) of a transformers folder of one of `classes`."""
    import transformers

    kind = model_type(folder, classes, role)
    model = getattr(transformers, classes[kind]).from_pretrained(folder)
    return model.to(device).eval(), transformers.AutoProcessor.from_pretrained(folder)


@dataclasses.dataclass
class TransformersStep(ModelStep):
    """A step with a transformers model and processor, from the folder its option names."""

    processor: Any = None
    role: ClassVar[str]  # the option naming the folder, and the model's role in errors
    classes: ClassVar[dict[str, str]]  # model_type -> transformers class

    def load(self) -> None:
        self.model, self.processor = load_model(
            getattr(self.options, self.role),
            self.classes,
            self.role,
            torch_device(self.options.device),
        )


@dataclasses.dataclass
class Captioner(TransformersStep):
    """Writes each image's caption with a BLIP or BLIP-2 captioning model."""

    role: ClassVar[str] = "captioner"
    classes: ClassVar[dict[str, str]] = CAPTIONERS

    def run(self, items: Sequence[Item]) -> list[Item | Dropped]:
        import torch

        inputs = self.processor(images=[item.image for item in items], return_tensors="pt")
        with torch.no_grad():
            ids = self.model.generate(
                **inputs.to(self.model.device), max_new_tokens=self.options.max_caption_tokens
            )
        for item, text in zip(
            items, self.processor.batch_decode(ids, skip_special_tokens=True), strict=True
        ):
            item.caption = " ".join(text.split())
        return list(items)


def noun_prompt(nouns: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The detector's prompt and each noun's character span in it."""
    spans, start = [], 0
    for noun in nouns:
        spans.append((start, start + len(noun)))
        start += len(noun) + len(NOUN_SEPARATOR)
    return NOUN_SEPARATOR.join(nouns) + PROMPT_END, spans


def noun_scores(
    probs: np.ndarray, offsets: np.ndarray, spans: Sequence[tuple[int, int]]
) -> np.ndarray:
    """(Q, nouns) best token probability of each noun; probs (Q, T), offsets (T, 2) characters."""
    scores = np.zeros((probs.shape[0], len(spans)), np.float32)
    for n, (start, end) in enumerate(spans):
        tokens = (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
        tokens = tokens[: probs.shape[1]]
        if tokens.any():
            scores[:, n] = probs[:, : len(tokens)][:, tokens].max(-1)
    return scores


@dataclasses.dataclass
class Detector(TransformersStep):
    """Boxes for the caption's nouns with Grounding DINO, one image at a time, thresholded and
    suppressed as the reference code does; each box is labelled with the noun it scores highest."""

    role: ClassVar[str] = "detector"
    classes: ClassVar[dict[str, str]] = DETECTORS

    def run(self, items: Sequence[Item]) -> list[Item | Dropped]:
        return [self._detect(item) for item in items]  # one by one: no padding of the image

    def _detect(self, item: Item) -> Item | Dropped:
        import torch

        prompt, spans = noun_prompt(item.nouns)
        text = self.processor.tokenizer(
            [prompt],
            truncation=True,
            max_length=self.model.config.max_text_len,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = text.pop("offset_mapping").numpy()[0]
        image = self.processor.image_processor([item.image], return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(**image.to(self.model.device), **text.to(self.model.device))
        probs = outputs.logits.sigmoid().float().cpu().numpy()[0]
        return self._boxes(item, probs, outputs.pred_boxes.float().cpu().numpy()[0], offsets, spans)

    def _boxes(
        self,
        item: Item,
        probs: np.ndarray,
        centre_boxes: np.ndarray,
        offsets: np.ndarray,
        spans: list[tuple[int, int]],
    ) -> Item | Dropped:
        options = self.options
        box_scores = probs.max(-1)
        per_noun = noun_scores(probs, offsets, spans)
        best = per_noun.argmax(-1)
        keep = (box_scores > options.box_threshold) & (
            per_noun[np.arange(len(best)), best] > options.text_threshold
        )
        found = int(keep.sum())
        detail = f"{found} found, {options.min_boxes} to {options.max_boxes} wanted"
        if found < options.min_boxes:
            return Dropped(item.key, Drop.FEW_BOXES, detail)
        if found > options.max_boxes:
            return Dropped(item.key, Drop.MANY_BOXES, detail)
        boxes = corners(centre_boxes[keep], *item.image.size)
        scores = box_scores[keep]
        kept = nms(boxes, scores, options.nms_iou)
        item.boxes, item.scores = boxes[kept], scores[kept]
        item.labels = tuple(item.nouns[n] for n in best[keep][kept])
        return item


@dataclasses.dataclass
class MaskMaker(ModelStep):
    """A SAM mask for each box (`model` is the `SamSegmenter`); boxes with an empty mask are
    dropped, and the caption gets its count words once the boxes are final."""

    def load(self) -> None:
        self.model = SamSegmenter(self.options.segmenter, self.options.device)

    def run(self, items: Sequence[Item]) -> list[Item | Dropped]:
        return [self._masks(item) for item in items]

    def _masks(self, item: Item) -> Item | Dropped:
        masks = self.model.masks(np.asarray(item.image), item.boxes)
        full = masks.reshape(len(masks), -1).any(-1)
        drops = (Drop.EMPTY_MASK,) * int((~full).sum())
        if full.sum() < self.options.min_boxes:
            detail = f"{int(full.sum())} of {len(masks)} boxes have a mask"
            return Dropped(item.key, Drop.EMPTY_MASK, detail, drops)
        item.masks, item.boxes, item.scores = masks[full], item.boxes[full], item.scores[full]
        item.labels = tuple(label for label, f in zip(item.labels, full, strict=True) if f)
        item.entity_drops = drops
        item.caption = counted_caption(item)
        return item
