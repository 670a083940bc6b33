"""What flows between the annotation steps: images being annotated, images dropped, the report."""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Any

import numpy as np
from PIL import Image


class Drop(enum.Enum):
    """Why an image (or one of its boxes) left the annotation."""

    UNREADABLE = "unreadable image"
    TINY = "image smaller than --min_side"
    FEW_NOUNS = "too few nouns in the caption"
    MANY_NOUNS = "too many nouns in the caption"
    FEW_BOXES = "too few boxes above the thresholds"
    MANY_BOXES = "too many boxes above the thresholds"
    EMPTY_MASK = "empty mask"


@dataclasses.dataclass
class Item:
    """One image on its way through the steps; each step fills in its fields."""

    key: str
    image: Image.Image  # RGB, upright
    ref: Any = None  # where the image came from (`inputs.ImageRef`)
    caption: str = ""
    words: tuple[str, ...] = ()  # the caption's tokens, their trailing spaces and lemmas
    spaces: tuple[str, ...] = ()
    lemmas: tuple[str, ...] = ()
    nouns: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # one per box
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.float32))
    masks: np.ndarray | None = None  # (N, H, W) bool
    entity_drops: tuple[Drop, ...] = ()


@dataclasses.dataclass(frozen=True)
class Dropped:
    """An image left out, and why."""

    key: str
    reason: Drop
    detail: str = ""
    entity_drops: tuple[Drop, ...] = ()

    def line(self) -> dict:
        """Its line in the dropped-images log."""
        return {"key": self.key, "reason": self.reason.name, "detail": self.detail}


@dataclasses.dataclass
class Report:
    """Images kept and dropped by reason; boxes dropped by reason; images done before."""

    kept: int = 0
    entities: int = 0
    resumed: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    entities_dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add_kept(self, entities: int, entity_drops: tuple[Drop, ...]) -> None:
        self.kept += 1
        self.entities += entities
        self.entities_dropped.update(d.value for d in entity_drops)

    def add_dropped(self, dropped: Dropped) -> None:
        self.dropped[dropped.reason.value] += 1
        self.entities_dropped.update(d.value for d in dropped.entity_drops)

    def summary(self) -> str:
        lines = [f"images kept: {self.kept} ({self.entities} entities)"]
        if self.resumed:
            lines.append(f"images annotated by an earlier run, skipped: {self.resumed}")
        lines.append(f"images dropped: {sum(self.dropped.values())}")
        lines += [f"  {reason}: {n}" for reason, n in sorted(self.dropped.items())]
        if self.entities_dropped:
            lines.append(f"boxes dropped: {sum(self.entities_dropped.values())}")
            lines += [f"  {reason}: {n}" for reason, n in sorted(self.entities_dropped.items())]
        return "\n".join(lines)
