"""Writing annotated images as lines of the JSONL manifest that `data/build_tfrecords.py` reads."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from data.annotation.items import Item

MASKS = "masks"
IMAGES = "images"  # images taken out of tars
INSIDE = 255
BOX_DECIMALS = 2
SCORE_DECIMALS = 4
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HASH_CHARS = 8


def file_stem(key: str) -> str:
    """A file name for a key: its safe characters and a short hash (distinct keys, distinct names)."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:_HASH_CHARS]
    return f"{_UNSAFE.sub('_', key)[-80:]}-{digest}"


@dataclasses.dataclass(frozen=True)
class ManifestWriter:
    """Writes an item's masks (and a tar member's image) under `out` and returns its line."""

    out: str

    def __call__(self, item: Item) -> dict:
        out = Path(self.out)
        stem = file_stem(item.key)
        if item.ref.member is None:
            image = os.path.relpath(item.ref.path, out)
        else:
            image = f"{IMAGES}/{stem}{Path(item.ref.member).suffix}"
            (out / IMAGES).mkdir(parents=True, exist_ok=True)
            (out / image).write_bytes(item.ref.read())
        (out / MASKS).mkdir(parents=True, exist_ok=True)
        entities = []
        for i, (label, box, score, mask) in enumerate(
            zip(item.labels, item.boxes, item.scores, item.masks, strict=True)
        ):
            name = f"{MASKS}/{stem}_{i}.png"
            Image.fromarray(np.where(mask, INSIDE, 0).astype(np.uint8)).save(out / name)
            entities.append(
                {
                    "label": label,
                    "box": [round(float(v), BOX_DECIMALS) for v in box],
                    "mask": name,
                    "score": round(float(score), SCORE_DECIMALS),
                }
            )
        return {"image": image, "key": item.key, "caption": item.caption, "entities": entities}
