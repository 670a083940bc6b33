"""Averaging per-image scores: per (subject, prompt), per subject over all its images, and
overall as the mean of the subjects' means (every subject weighs the same)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

PAIRING = (
    "DINO and CLIP-I: every generated image against every real image of its subject (both "
    "subjects of a pair, each against its own real images, then the two averaged), cosines "
    "averaged over all generated x real pairs of a subject; CLIP-T: every generated image "
    "against its prompt with the class noun in place of the placeholder; then averaged over "
    "subjects (or pairs), each weighing the same."
)


@dataclasses.dataclass(frozen=True)
class ImageScore:
    """The scores of one generated image of a subject (or pair) and prompt."""

    key: str
    prompt: str
    path: str
    values: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Summary:
    """Means per (subject, prompt), per subject, overall; `images` counts what was averaged."""

    overall: dict[str, float]
    per_subject: dict[str, dict[str, float]]
    per_prompt: dict[tuple[str, str], dict[str, float]]


def _means(rows: Sequence[ImageScore], metrics: Sequence[str]) -> dict[str, float]:
    means = {m: float(np.mean([r.values[m] for r in rows])) for m in metrics}
    return {**means, "images": len(rows)}


def aggregate(scores: Sequence[ImageScore], metrics: Sequence[str]) -> Summary:
    """The three levels of means of `scores` (per-image values of every metric)."""
    if not scores:
        raise ValueError("no generated image could be scored")
    by_subject: dict[str, list[ImageScore]] = defaultdict(list)
    by_prompt: dict[tuple[str, str], list[ImageScore]] = defaultdict(list)
    for score in scores:
        by_subject[score.key].append(score)
        by_prompt[score.key, score.prompt].append(score)
    per_subject = {key: _means(rows, metrics) for key, rows in by_subject.items()}
    per_prompt = {key: _means(rows, metrics) for key, rows in by_prompt.items()}
    overall = {m: float(np.mean([s[m] for s in per_subject.values()])) for m in metrics}
    return Summary({**overall, "subjects": len(per_subject)}, per_subject, per_prompt)
