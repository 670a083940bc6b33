"""JSONL manifest input: one line per image, paths relative to the manifest's folder.

    {"image": "images/cat.jpg", "caption": "a cat on a sofa", "key": "cat-1",
     "entities": [{"label": "cat", "box": [x0, y0, x1, y1], "mask": "masks/cat.png", "score": 0.9},
                  {"label": "sofa", "box": [...], "polygon": [[x0, y0, x1, y1, ...], ...]}]}

`key` (default: the image path) and `score` (default 1.0) are optional; each entity has a `mask`
(a single-channel PNG, nonzero = inside), a `polygon` (a COCO polygon list, or one flat list), or
neither (a box only). Each manifest file is one unit of work: split a large manifest into several for Beam.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from numbers import Number
from pathlib import Path
from typing import Any

import numpy as np

from data.masks import MaskError, decode_binary_png, rasterize_polygons
from data.records import RawEntity, RawImage, Reason, Skip


def _mask_file(path: Path, _height: int, _width: int) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MaskError(f"cannot read {path}: {error}") from error
    return decode_binary_png(data)


def _polygon(polygon: Any, height: int, width: int) -> np.ndarray:
    if not isinstance(polygon, list) or not polygon:
        raise MaskError(f"polygon {polygon!r} is not a non-empty list")
    polygons = polygon if isinstance(polygon[0], list) else [polygon]
    return rasterize_polygons(polygons, height, width)


@dataclasses.dataclass(frozen=True)
class ManifestSource:
    """Images listed in JSONL manifests; each manifest file is one unit of work."""

    manifests: tuple[str, ...]

    def units(self) -> list[str]:
        return sorted(self.manifests)

    def read(self, unit: str) -> Iterator[RawImage | Skip]:
        folder = Path(unit).parent
        with open(unit, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield self._line(unit, folder, f"line {number}", line)

    def _line(self, manifest: str, folder: Path, record: str, line: str) -> RawImage | Skip:
        try:
            item = json.loads(line)
        except ValueError as error:
            return Skip(Reason.MALFORMED, manifest, record, f"not JSON: {error}")
        valid = (
            isinstance(item, dict)
            and isinstance(item.get("image"), str)
            and isinstance(item.get("entities", []), list)
        )
        if not valid:
            return Skip(
                Reason.MALFORMED, manifest, record, "needs an image path and an entity list"
            )
        return RawImage(
            key=str(item.get("key", item["image"])),
            file=manifest,
            record=record,
            load_image=(folder / item["image"]).read_bytes,
            caption=item.get("caption"),
            entities=tuple(_entity(e, folder, manifest, record) for e in item.get("entities", [])),
        )


def _entity(entry: Any, folder: Path, manifest: str, record: str) -> RawEntity | Skip:
    """An entity of a manifest line, or why it cannot be used."""
    valid = (
        isinstance(entry, dict)
        and isinstance(entry.get("label"), str)
        and "box" in entry
        and isinstance(entry.get("score", 1.0), Number)
        and not ("mask" in entry and "polygon" in entry)
    )
    if not valid:
        detail = (
            f"entity {entry!r} needs a label, a box, a numeric score and at most one of a mask "
            "and a polygon"
        )
        return Skip(Reason.MALFORMED, manifest, record, detail, True)
    mask = None
    if "mask" in entry:
        mask = functools.partial(_mask_file, folder / str(entry["mask"]))
    elif "polygon" in entry:
        mask = functools.partial(_polygon, entry["polygon"])
    score = float(entry.get("score", 1.0))
    return RawEntity(label=entry["label"], box=entry["box"], mask=mask, score=score)
