"""Scores of generated images: DINO, and CLIP-I and CLIP-T per CLIP model (`sdjax.eval.metrics`).

Real and generated images are read, preprocessed per encoder and embedded in batches. An image
that cannot be read is counted, named in `unreadable` and left out of every mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from sdjax.eval.encoders import ClipScorer, Features, in_batches
from sdjax.eval.metrics import mean_cosine_to_set, paired_cosine
from sdjax.eval.preprocess import encoder_input
from sdjax.eval.scores import ImageScore
from sdjax.eval.tasks import Task
from sdjax.images import upright

DINO = "dino"


def clip_i(name: str) -> str:
    return f"clip_i[{name}]"


def clip_t(name: str) -> str:
    return f"clip_t[{name}]"


def metric_names(clips: Sequence[ClipScorer]) -> list[str]:
    """The metrics of a run, in table order."""
    return [DINO, *(m for c in clips for m in (clip_i(c.name), clip_t(c.name)))]


@dataclasses.dataclass
class Embedder:
    """Image embeddings of every encoder: DINO and each CLIP model's image side."""

    dino: Features
    clips: Sequence[ClipScorer]
    config: ConfigDict  # the `metrics` section
    unreadable: list[str] = dataclasses.field(default_factory=list)

    def read(self, paths: Sequence[Path]) -> list[tuple[Path, Image.Image]]:
        """The images of `paths` that can be read; the others are noted in `unreadable`."""
        images = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    images.append((path, upright(image).convert("RGB")))
            except (OSError, UnidentifiedImageError) as error:
                self.unreadable.append(f"{path}: {error}")
        return images

    def embed(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """{'dino': (N, D), clip name: (N, P)} of PIL images."""
        batch = self.config.batch_size

        def inputs(section: ConfigDict) -> np.ndarray:
            return np.stack(
                [
                    encoder_input(i, section.resize, section.crop, section.mean, section.std)
                    for i in images
                ]
            )

        out = {DINO: in_batches(self.dino, inputs(self.config.dino), batch)}
        clip_inputs = inputs(self.config.clip)
        for clip in self.clips:
            out[clip.name] = in_batches(clip.image, clip_inputs, batch)
        return out


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def real_features(
    embedder: Embedder, subjects: dict[str, Sequence[Path]]
) -> dict[str, dict[str, np.ndarray]]:
    """Embeddings of each subject's readable real images; a subject left with none is an error."""
    features = {}
    for name, paths in subjects.items():
        images = embedder.read(paths)
        if not images:
            raise ValueError(f"no real image of subject {name!r} could be read")
        features[name] = embedder.embed([image for _, image in images])
    return features


def score_tasks(
    embedder: Embedder,
    tasks: Sequence[Task],
    real: dict[str, dict[str, np.ndarray]],
    *,
    progress: bool = True,
) -> list[ImageScore]:
    """Per-image scores of every task whose image exists and reads (pairing: `scores.PAIRING`)."""
    prompts = sorted({t.prompt for t in tasks})
    text = {
        c.name: dict(zip(prompts, c.text_features(prompts), strict=True)) for c in embedder.clips
    }
    present = [t for t in tasks if t.path.exists()]
    scores = []
    size = embedder.config.batch_size
    for chunk in tqdm(list(chunks(present, size)), unit="batch", disable=not progress):
        by_path = {t.path: t for t in chunk}
        read = embedder.read([t.path for t in chunk])
        if not read:
            continue
        generated = embedder.embed([image for _, image in read])
        for row, (path, _) in enumerate(read):
            task = by_path[path]
            values = {
                DINO: subject_mean(generated[DINO][row], task, real, DINO),
            }
            for clip in embedder.clips:
                embedding = generated[clip.name][row]
                values[clip_i(clip.name)] = subject_mean(embedding, task, real, clip.name)
                values[clip_t(clip.name)] = float(
                    paired_cosine(embedding[None], text[clip.name][task.prompt][None])[0]
                )
            scores.append(ImageScore(task.key, task.prompt, str(path), values))
    return scores


def subject_mean(
    embedding: np.ndarray, task: Task, real: dict[str, dict[str, np.ndarray]], encoder: str
) -> float:
    """Mean cosine of one generated embedding with the real images of each subject of its task,
    averaged over the task's subjects."""
    return float(
        np.mean([mean_cosine_to_set(embedding[None], real[s.name][encoder])[0] for s in task.group])
    )
