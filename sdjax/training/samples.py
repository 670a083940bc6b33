"""Sample images during training: one prompt and subject set, drawn with the current weights."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict
from PIL import Image

from sdjax.sampling import Subject, SubjectDiffusionPipeline, image_grid, to_pil
from sdjax.sharding import replicated


class TrainingSamples:
    """Renders `config.train.sample_prompt` with `sample_subjects` (image paths, each optionally
    `path@x0,y0,x1,y1` for where it goes) into WORKDIR/samples/step_N.png; the pipeline compiles
    once and only its parameters change between calls."""

    def __init__(self, config: ConfigDict, workdir: Path):
        self.config = config
        self.directory = workdir / "samples"
        self.subjects = [_subject(spec) for spec in config.train.sample_subjects]
        self.pipeline: SubjectDiffusionPipeline | None = None

    def __call__(self, step: int, model: nnx.Module) -> np.ndarray:
        """The grid of images (H, W, 3) uint8, also written as a PNG."""
        if self.pipeline is None:
            self.pipeline = SubjectDiffusionPipeline(model, self.config)
        else:
            params = nnx.state(model)
            self.pipeline.params = jax.device_put(params, replicated(self.pipeline.mesh))
        images = self.pipeline.generate(
            self.config.train.sample_prompt,
            self.subjects,
            num_images=self.config.train.sample_images,
            seed=self.config.seed,
        )
        grid = np.asarray(image_grid(to_pil(images)))
        self.directory.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(self.directory / f"step_{step:07d}.png")
        return grid


def _subject(spec: str) -> Subject:
    path, _, layout = spec.partition("@")
    box = tuple(float(v) for v in layout.split(",")) if layout else None
    return Subject(path, layout=box)
