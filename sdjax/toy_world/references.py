"""Labelled subject references of the world, for pre-fitting the image encoder.

Two views of each subject, as the image encoder meets them:
- **cut-outs**: subjects of rendered training scenes, cut out by their masks and augmented by the
  reader's own `augment.subject_images` (what Subject-Diffusion trains on);
- **drawings**: a subject alone on white at a random size and margin, prepared by the sampling
  pipeline's `reference_image` (what a user gives `sample.py`).

Labels are the subject's class, colour and pattern (indices into CLASSES, COLOURS, PATTERNS).
Training uses training looks only; `held_out=True` draws held-out looks, for evaluation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ml_collections import ConfigDict

from sdjax.sampling.subjects import reference_image
from sdjax.toy_world import world

LABELS = {"class": world.CLASSES, "colour": tuple(world.COLOURS), "pattern": world.PATTERNS}
SCENE_BATCH = 64  # scenes augmented in one call


@dataclasses.dataclass(frozen=True)
class LabelledReferences:
    """(N, s, s, 3) CLIP-normalised float32 references and their (N,) int32 labels by name."""

    pixels: np.ndarray
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.pixels)

    @classmethod
    def concatenate(cls, parts: list[LabelledReferences]) -> LabelledReferences:
        return cls(
            np.concatenate([p.pixels for p in parts]),
            {k: np.concatenate([p.labels[k] for p in parts]) for k in LABELS},
        )


def label_indices(subjects: list[world.Subject]) -> dict[str, np.ndarray]:
    """The class, colour and pattern indices of `subjects`."""
    values = {
        "class": [s.cls for s in subjects],
        "colour": [s.look.colour for s in subjects],
        "pattern": [s.look.pattern for s in subjects],
    }
    return {k: np.array([LABELS[k].index(v) for v in values[k]], np.int32) for k in LABELS}


def _augmented_cut_outs(
    scenes: list[world.Scene], size: int, period: float, data: ConfigDict, seed: int
) -> np.ndarray:
    """(N, s, s, 3): every subject of `scenes` as the reader makes its reference."""
    import tensorflow as tf  # noqa: PLC0415 (the reader's augmentation: only when a fit runs)

    from sdjax.input_pipeline import augment  # noqa: PLC0415

    slots = max(len(s.subjects) for s in scenes)
    images, masks, boxes, valid = [], [], [], []
    for scene in scenes:
        image, visible = world.render_scene(scene, size, period)
        empty = slots - len(visible)
        images.append(image.astype(np.float32) / 127.5 - 1.0)
        masks.append(np.stack(visible + [np.zeros((size, size), bool)] * empty))
        boxes.append([np.array(s.box) / size for s in scene.subjects] + [np.zeros(4)] * empty)
        valid.append([True] * len(visible) + [False] * empty)
    valid = np.array(valid)
    draws = tf.random.stateless_uniform([len(scenes), slots, augment.SUBJECT_DRAWS], [seed, 1])
    pixels = augment.subject_images(
        tf.constant(np.stack(images)),
        tf.constant(np.stack(masks)),
        tf.constant(np.array(boxes, np.float32)),
        tf.constant(valid),
        draws,
        tf.constant([seed, 2]),
        data,
    ).numpy()
    return pixels[valid]


def cut_outs(
    rng: np.random.Generator, count: int, world_cfg: ConfigDict, data: ConfigDict, held_out: bool
) -> LabelledReferences:
    """The subjects of random scenes (`count` scenes) as the reader's augmented references."""
    parts = []
    for start in range(0, count, SCENE_BATCH):
        scenes = [
            world.configured_scene(rng, world_cfg, held_out)
            for _ in range(min(SCENE_BATCH, count - start))
        ]
        pixels = _augmented_cut_outs(
            scenes, world_cfg.image_size, world_cfg.pattern_period, data, int(rng.integers(2**31))
        )
        subjects = [s for scene in scenes for s in scene.subjects]
        parts.append(LabelledReferences(pixels, label_indices(subjects)))
    return LabelledReferences.concatenate(parts)


def drawings(
    rng: np.random.Generator,
    count: int,
    world_cfg: ConfigDict,
    data: ConfigDict,
    held_out: bool,
    sizes: tuple[int, int],
    margins: tuple[float, float],
) -> LabelledReferences:
    """`count` subjects drawn alone on white (side in `sizes`, margin fraction in `margins`), their
    patterns at the world's period scaled to their side."""
    looks_of = world.held_out_looks if held_out else world.training_looks
    pixels, subjects = [], []
    for _ in range(count):
        cls = world.CLASSES[int(rng.integers(len(world.CLASSES)))]
        looks = looks_of(cls)
        look = looks[int(rng.integers(len(looks)))]
        side = int(rng.integers(sizes[0], sizes[1] + 1))
        margin = float(rng.uniform(*margins))
        drawn = world.render_reference(cls, look, side, margin, world_cfg.pattern_period)
        pixels.append(
            reference_image(
                drawn, None, None, data.subject_size, data.augment.clip_mean, data.augment.clip_std
            )
        )
        subjects.append(world.Subject(cls, look, (0, 0, side, side)))
    return LabelledReferences(np.stack(pixels), label_indices(subjects))


class WorldReferences:
    """The world's labelled references for `encoder_fit` (an `encoder_fit.ReferenceSource`).

    Training pool: `pool_scenes` scenes' cut-outs and `pool_drawings` drawings, training looks.
    Held-out sets: `eval_scenes` scenes' cut-outs, and `eval_drawings` drawings at the size a
    benchmark reference has (`eval_drawing_size`, margin `world.DEFAULT_REFERENCE_MARGIN`).
    """

    label_sizes = {k: len(v) for k, v in LABELS.items()}

    def __init__(self, config: ConfigDict):
        self.world, self.data, self.cfg = config.world, config.data, config.encoder_fit
        self.settings = {
            "world": self.world.to_dict(),
            "subject_size": self.data.subject_size,
            "background": self.data.background,
            "augment": self.data.augment.to_dict(),
        }

    def training(self) -> LabelledReferences:
        rng = np.random.default_rng(self.cfg.seed)
        return LabelledReferences.concatenate(
            [
                cut_outs(rng, self.cfg.pool_scenes, self.world, self.data, held_out=False),
                drawings(
                    rng,
                    self.cfg.pool_drawings,
                    self.world,
                    self.data,
                    False,
                    self.cfg.drawing_sizes,
                    self.cfg.drawing_margins,
                ),
            ]
        )

    def held_out(self) -> dict[str, LabelledReferences]:
        rng = np.random.default_rng(self.cfg.seed + 1)
        size, margin = self.cfg.eval_drawing_size, world.DEFAULT_REFERENCE_MARGIN
        return {
            "cut_outs": cut_outs(rng, self.cfg.eval_scenes, self.world, self.data, held_out=True),
            "drawings": drawings(
                rng,
                self.cfg.eval_drawings,
                self.world,
                self.data,
                True,
                (size, size),
                (margin, margin),
            ),
        }
