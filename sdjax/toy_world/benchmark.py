"""Learning measured: a trained pipeline draws the held-out scenes of the world (held-out looks,
fresh layouts), each subject given as a reference drawn on white, and the evaluator scores them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sdjax.models.vae import AutoencoderKL
from sdjax.sampling import Subject, SubjectDiffusionPipeline, image_grid
from sdjax.toy_world.evaluate import (
    ImageResult,
    evaluate_scene,
    pattern_confusion,
    stripes_line_shares,
    summarise,
)
from sdjax.toy_world.world import Scene, caption, render_reference, render_scene

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

    def pattern_confusion(self) -> dict[str, dict[str, int]]:
        return pattern_confusion(self.scenes, self.results)

    def stripes_line_share(self) -> dict[str, float]:
        """Median and quartiles of `line_share` over the striped requests found."""
        shares = stripes_line_shares(self.scenes, self.results)
        if not shares:
            return {}
        q25, median, q75 = np.quantile(shares, [0.25, 0.5, 0.75]).tolist()
        return {"found": len(shares), "q25": q25, "median": median, "q75": q75}


def scene_request(scene: Scene, image_size: int, period: float) -> tuple[str, list[Subject]]:
    """The prompt and subjects (reference on white, class noun label, layout box) of a scene of a
    world whose patterns have `period` pixels."""
    subjects = [
        Subject(
            render_reference(s.cls, s.look, REFERENCE_SIZE, world_period=period),
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
    period: float,
    *,
    seed: int = 0,
    use_references: bool = True,
    **sampling,
) -> SampledSet:
    """Draws every scene once (batched) and scores each image against its scene."""
    requests = [scene_request(scene, image_size, period) for scene in scenes]
    images = pipeline.generate_each(
        requests,
        seed=seed,
        height=image_size,
        width=image_size,
        use_references=use_references,
        progress=True,
        **sampling,
    )
    return score_scenes(np.round(images * 255).astype(np.uint8), scenes)


def score_scenes(images: np.ndarray, scenes: Sequence[Scene]) -> SampledSet:
    """Scores (N, H, W, 3) uint8 images, each against its scene."""
    results = [evaluate_scene(image, scene) for image, scene in zip(images, scenes, strict=True)]
    return SampledSet(list(scenes), images, results)


def reconstructed_scenes(
    reconstruct: Callable[[np.ndarray], np.ndarray],
    scenes: Sequence[Scene],
    image_size: int,
    period: float,
) -> SampledSet:
    """The ceiling of a latent model: the true scenes through `reconstruct` (uint8 images in and
    out, e.g. the VAE's encode then decode), scored as samples are. A diffusion model that drew
    each scene's latents exactly would score this."""
    truth = np.stack([render_scene(scene, image_size, period)[0] for scene in scenes])
    return score_scenes(reconstruct(truth), scenes)


def vae_round_trip(vae: AutoencoderKL) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images → the VAE's decoding of their posterior means, as uint8."""
    encode_decode = jax.jit(lambda x: vae.decode(vae.encode(x).mean))

    def reconstruct(images: np.ndarray) -> np.ndarray:
        decoded = np.asarray(encode_decode(jnp.asarray(images, jnp.float32) / 127.5 - 1.0))
        return np.clip(np.round((decoded + 1.0) * 127.5), 0, 255).astype(np.uint8)

    return reconstruct


def comparison_grid(sampled: SampledSet, count: int, image_size: int, period: float) -> Image.Image:
    """Rows of [references..., generated image] for the first `count` scenes (references shrunk
    to the image size), so identity and place can be judged by eye."""
    tiles = []
    slots = max(len(scene.subjects) for scene in sampled.scenes[:count])
    blank = Image.new("RGB", (image_size, image_size), "white")
    for scene, image in zip(sampled.scenes[:count], sampled.images[:count], strict=False):
        references = [
            Image.fromarray(render_reference(s.cls, s.look, image_size, world_period=period))
            for s in scene.subjects
        ]
        references += [blank] * (slots - len(references))
        tiles += [*references, Image.fromarray(image)]
    return image_grid(tiles, columns=slots + 1)
