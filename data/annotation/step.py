"""The shape of an annotation step: a batch of items in, each item or why it was dropped out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from data.annotation.items import Dropped, Item
from data.annotation.options import AnnotateOptions


@dataclasses.dataclass
class ModelStep:
    """A step whose model loads on first use, or in a Beam worker's `setup` through `load`."""

    options: AnnotateOptions
    model: Any = None

    def load(self) -> None:
        """Sets `model` from the options."""
        raise NotImplementedError

    def run(self, items: Sequence[Item]) -> list[Item | Dropped]:
        """The step on a batch, its model loaded."""
        raise NotImplementedError

    def __call__(self, items: Sequence[Item]) -> list[Item | Dropped]:
        if self.model is None:
            self.load()
        return self.run(items)
