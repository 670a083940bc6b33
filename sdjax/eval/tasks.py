"""The images a DreamBench evaluation draws: one `Task` per (subject or pair, prompt, k), each
with its file, and the reference photo each subject is drawn from."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdjax.eval.dreambench import (
    DreamBench,
    DreamSubject,
    group_key,
    group_noun,
    pair_templates,
    prompt_text,
)
from sdjax.sampling import SamplingInputError, Subject
from sdjax.sampling.layout import BoxTuple
from sdjax.sampling.subjects import mask_box, read_subject

IMAGE_NAME = "{prompt:02d}_{image:02d}.png"


@dataclasses.dataclass(frozen=True)
class Task:
    """One image to draw; `index` (its place in the whole run) seeds its noise and layout."""

    index: int
    key: str
    group: tuple[DreamSubject, ...]
    prompt_index: int
    prompt: str
    image_index: int
    path: Path


@dataclasses.dataclass(frozen=True)
class Reference:
    """A subject's reference photo: pixels, mask (or None) and the mask's box (or None)."""

    path: Path
    pixels: np.ndarray
    mask: np.ndarray | None
    own_box: BoxTuple | None


def build_tasks(
    bench: DreamBench, groups: Sequence[Sequence[DreamSubject]], per_prompt: int, out: Path
) -> list[Task]:
    """Every image of the run, in a fixed order: group, prompt, image."""
    tasks = []
    for group in groups:
        key = group_key(group)
        for p, template in enumerate(pair_templates(bench, group)):
            prompt = prompt_text(template, group_noun(group))
            for k in range(per_prompt):
                path = out / key / IMAGE_NAME.format(prompt=p, image=k)
                tasks.append(Task(len(tasks), key, tuple(group), p, prompt, k, path))
    return tasks


def read_reference(subject: DreamSubject, index: int) -> Reference:
    """The subject's `index`-th readable photo, cut out by its mask when there is one (photos
    that cannot be read are passed over here and reported by the scoring)."""
    readable = 0
    for path in subject.images:
        try:
            pixels, mask = read_subject(Subject(path, mask=subject.masks.get(path)))
        except SamplingInputError:
            continue
        if readable == index:
            box = None if mask is None else mask_box(mask, str(path))
            return Reference(path, pixels, mask, box)
        readable += 1
    raise SamplingInputError(
        f"subject {subject.name!r} has {readable} readable images; reference_index={index} "
        "needs more"
    )
