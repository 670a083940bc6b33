"""Drawing the images of a DreamBench run with the sampling pipeline, resumably.

A task whose file exists is skipped; files are written whole (a temporary name, then renamed),
so an interrupted run leaves no half image and the next run draws exactly the missing ones.
Each task's initial noise and layout come from (seed, task index) alone, so a resumed run draws
the images an uninterrupted one would (deterministic samplers). With several processes, each
draws the tasks whose index falls to it, on its own devices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from sdjax.eval.layouts import own_layout, random_layout
from sdjax.eval.tasks import Reference, Task
from sdjax.sampling import Subject, SubjectDiffusionPipeline, to_pil
from sdjax.sampling.layout import BoxTuple
from sdjax.sampling.pipeline import initial_noise

LAYOUTS = ("random", "own")
PARTIAL_SUFFIX = ".partial"
SAMPLING_OPTIONS = ("steps", "scheduler", "guidance_text", "guidance_image")


def task_layout(task: Task, references: dict[str, Reference], config: ConfigDict) -> list[BoxTuple]:
    """The output boxes of a task's subjects (`config.layout`: random or own)."""
    seed = (config.seed, task.index)
    if config.layout == "random":
        return random_layout(
            seed, len(task.group), config.box_size_px, config.box_offset_px, config.canvas_px
        )
    if config.layout == "own":
        own = [references[s.name].own_box for s in task.group]
        return own_layout(seed, own, config.own_box_jitter)
    raise ValueError(f"generation.layout={config.layout!r}; expected one of {LAYOUTS}")


def task_request(
    task: Task, references: dict[str, Reference], config: ConfigDict
) -> tuple[str, list[Subject]]:
    """The pipeline request of a task: its prompt and subjects (class noun label, layout box)."""
    boxes = task_layout(task, references, config)
    subjects = [
        Subject(references[s.name].pixels, mask=references[s.name].mask, label=s.noun, layout=box)
        for s, box in zip(task.group, boxes, strict=True)
    ]
    return task.prompt, subjects


def save_whole(image, path: Path) -> None:
    """Writes a PNG under a temporary name and renames it: `path` exists only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    image.save(partial, format="PNG")
    os.replace(partial, path)


def own_tasks(tasks: Sequence[Task]) -> list[Task]:
    """The tasks this process draws (every `process_count`-th by index)."""
    count, index = jax.process_count(), jax.process_index()
    return [t for t in tasks if t.index % count == index]


def generate_missing(
    pipe: SubjectDiffusionPipeline,
    tasks: Sequence[Task],
    references: dict[str, Reference],
    config: ConfigDict,
    *,
    progress: bool = True,
) -> int:
    """Draws this process's tasks that have no file yet; returns how many it drew."""
    mine = own_tasks(tasks)
    missing = [t for t in mine if not t.path.exists()]
    height = config.height or pipe.config.data.resolution
    width = config.width or pipe.config.data.resolution
    latent_shape = (height // pipe.vae_factor, width // pipe.vae_factor, pipe.latent_channels)
    options = {k: config[k] for k in SAMPLING_OPTIONS if config[k] is not None}
    with tqdm(
        total=len(mine), initial=len(mine) - len(missing), unit="image", disable=not progress
    ) as bar:
        for start in range(0, len(missing), config.chunk):
            chunk = missing[start : start + config.chunk]
            indices = jnp.asarray([t.index for t in chunk], jnp.int32)
            latents = np.asarray(initial_noise(jnp.uint32(config.seed), indices, latent_shape))
            images = pipe.generate_each(
                [task_request(t, references, config) for t in chunk],
                latents=latents,
                seed=config.seed,
                height=height,
                width=width,
                **options,
            )
            for task, image in zip(chunk, to_pil(images), strict=True):
                save_whole(image, task.path)
            bar.update(len(chunk))
    return len(missing)
