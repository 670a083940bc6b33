"""Learning measured: a trained pipeline draws the held-out scenes of the world (held-out looks,
fresh layouts), each subject given as a reference drawn on white, and the evaluator scores them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image

from sdjax.sampling import Subject, SubjectDiffusionPipeline, image_grid
from sdjax.toy_world.evaluate import ImageResult, Request, evaluate_image, summarise
from sdjax.toy_world.world import Scene, caption, render_reference

REFERENCE_SIZE = 128  # pixels of the reference images a user would draw
METRICS = ("location", "identity", "class", "scene")


@dataclasses.dataclass(frozen=True)
class SampledSet:
    """The images drawn for scenes of one subject count, and their scores."""

    scenes: list[Scene]
    images: np.ndarray  # (N, H, W, 3) uint8
    results: list[ImageResult]

    def summary(self) -> dict[str, float]:
        return summarise(self.results)


def scene_request(scene: Scene, image_size: int) -> tuple[str, list[Subject]]:
    """The prompt and subjects (reference on white, class noun label, layout box) of a scene."""
    subjects = [
        Subject(
            render_reference(s.cls, s.look, REFERENCE_SIZE),
            label=s.cls,
            layout=tuple(v / image_size for v in s.box),
        )
        for s in scene.subjects
    ]
    return caption(scene), subjects


def sample_scenes(
    pipeline: SubjectDiffusionPipeline,
    scenes: Sequence[Scene],
    image_size: int,
    *,
    seed: int = 0,
    use_references: bool = True,
    **sampling,
) -> SampledSet:
    """Draws every scene once (batched) and scores each image against its scene."""
    requests = [scene_request(scene, image_size) for scene in scenes]
    images = pipeline.generate_each(
        requests,
        seed=seed,
        height=image_size,
        width=image_size,
        use_references=use_references,
        progress=True,
        **sampling,
    )
    pixels = np.round(images * 255).astype(np.uint8)
    results = [
        evaluate_image(
            image, [Request(s.cls, s.look, s.box) for s in scene.subjects], scene.background
        )
        for image, scene in zip(pixels, scenes, strict=True)
    ]
    return SampledSet(list(scenes), pixels, results)


def comparison_grid(sampled: SampledSet, count: int, image_size: int) -> Image.Image:
    """Rows of [references..., generated image] for the first `count` scenes (references shrunk
    to the image size), so identity and place can be judged by eye."""
    tiles = []
    slots = max(len(scene.subjects) for scene in sampled.scenes[:count])
    blank = Image.new("RGB", (image_size, image_size), "white")
    for scene, image in zip(sampled.scenes[:count], sampled.images[:count], strict=False):
        references = [
            Image.fromarray(render_reference(s.cls, s.look, image_size)) for s in scene.subjects
        ]
        references += [blank] * (slots - len(references))
        tiles += [*references, Image.fromarray(image)]
    return image_grid(tiles, columns=slots + 1)
