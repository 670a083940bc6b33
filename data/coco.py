"""COCO-style input: `instances_*.json` (boxes, polygon or RLE masks, categories) + `captions_*.json`.

The entity label is the category name. An annotation without `segmentation` (absent, null or an
empty list) is an entity with a box only. Of an image's captions, the one naming the most distinct
labels is used (the first, by caption id, on ties). Crowd annotations are left out.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.masks import decode_coco_segmentation
from data.records import RawEntity, RawImage, Reason, Skip
from sdjax.captions import label_in_caption


@dataclasses.dataclass(frozen=True)
class CocoImage:
    """One image entry with its annotations (category names filled in) and captions."""

    image: dict[str, Any]
    annotations: tuple[dict[str, Any], ...]
    captions: tuple[str, ...]


def _load(path: str, required: Sequence[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    missing = [k for k in required if k not in content]
    if missing:
        raise ValueError(f"{path} is not a COCO annotation file: it lacks {missing}")
    return content


def choose_caption(captions: Sequence[str], labels: Sequence[str]) -> str | None:
    """The caption naming the most distinct labels; the first one on ties."""
    if not captions:
        return None
    distinct = set(labels)
    return max(captions, key=lambda c: sum(label_in_caption(label, c) for label in distinct))


def _corner_box(bbox: Any) -> list[float]:
    """COCO x, y, width, height -> x0, y0, x1, y1."""
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


@dataclasses.dataclass(frozen=True)
class CocoSource:
    """Images of a COCO instances file, with captions from a COCO captions file."""

    instances: str
    captions: str
    image_dir: str

    def units(self) -> list[CocoImage]:
        instances = _load(self.instances, ("images", "annotations", "categories"))
        captions = _load(self.captions, ("annotations",))
        names = {c["id"]: c["name"] for c in instances["categories"]}
        annotations = defaultdict(list)
        for ann in sorted(instances["annotations"], key=lambda a: a["id"]):
            annotations[ann["image_id"]].append(
                {**ann, "category_name": names.get(ann["category_id"])}
            )
        texts = defaultdict(list)
        for cap in sorted(captions["annotations"], key=lambda c: c["id"]):
            texts[cap["image_id"]].append(cap["caption"])
        return [
            CocoImage(image, tuple(annotations[image["id"]]), tuple(texts[image["id"]]))
            for image in sorted(instances["images"], key=lambda i: i["id"])
        ]

    def read(self, unit: CocoImage) -> Iterator[RawImage]:
        image = unit.image
        record = f"image id {image['id']} ({image['file_name']})"
        entities = tuple(self._entity(ann, image, record) for ann in unit.annotations)
        labels = [e.label for e in entities if isinstance(e, RawEntity)]
        yield RawImage(
            key=image["file_name"],
            file=self.instances,
            record=record,
            load_image=Path(self.image_dir, image["file_name"]).read_bytes,
            caption=choose_caption(unit.captions, labels),
            entities=entities,
        )

    def _entity(self, ann: dict[str, Any], image: dict[str, Any], record: str) -> RawEntity | Skip:
        def skip(reason: Reason, detail: str) -> Skip:
            return Skip(
                reason, self.instances, record, f"annotation id {ann['id']}: {detail}", True
            )

        if ann.get("iscrowd"):
            return skip(Reason.CROWD, "iscrowd")
        if ann["category_name"] is None:
            return skip(Reason.MALFORMED, f"unknown category id {ann['category_id']}")
        try:
            box = _corner_box(ann["bbox"])
        except (KeyError, TypeError, ValueError):
            return skip(Reason.MALFORMED, f"bbox {ann.get('bbox')!r}")
        return RawEntity(
            label=ann["category_name"],
            box=box,
            mask=_segmentation_mask(ann.get("segmentation"), image["height"], image["width"]),
            score=float(ann.get("score", 1.0)),
        )


def _segmentation_mask(
    segmentation: Any, height: int, width: int
) -> Callable[[int, int], np.ndarray] | None:
    """The mask decoder of an annotation; None when it has no segmentation (a box only).

    Polygons are drawn at the size the file declares: a mismatch with the real image then shows
    as a mask of the wrong size.
    """
    if segmentation is None or segmentation == []:
        return None
    return lambda _h, _w: decode_coco_segmentation(segmentation, height, width)
