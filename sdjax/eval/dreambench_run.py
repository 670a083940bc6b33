"""One DreamBench evaluation: read the folder, draw the missing images, score them, write the
outputs (`sdjax.eval.report`). Only process 0 scores and writes when several processes run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from sdjax.eval.dreambench import DreamBench, DreamSubject, read_dreambench, read_pairs
from sdjax.eval.encoders import check_encoder_folders, load_clip, load_dino
from sdjax.eval.generate import generate_missing
from sdjax.eval.measure import Embedder, metric_names, real_features, score_tasks
from sdjax.eval.report import (
    markdown_table,
    results_content,
    write_csv,
    write_grids,
    write_json,
)
from sdjax.eval.scores import Summary, aggregate
from sdjax.eval.tasks import Task, build_tasks, read_reference
from sdjax.sampling import SubjectDiffusionPipeline

MODES = ("single", "two")
IMAGES_FOLDER = "images"


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where a run reads and writes."""

    dreambench: Path
    export: Path
    dino: Path
    clips: Sequence[Path]
    out: Path
    pairs: Path


def subject_groups(bench: DreamBench, mode: str, pairs: Path) -> list[tuple[DreamSubject, ...]]:
    """Every subject alone, or the pairs of the pairs file."""
    if mode == "single":
        return [(s,) for s in bench.subjects.values()]
    if mode == "two":
        return [
            tuple(bench.subjects[n] for n in pair)
            for pair in read_pairs(pairs, list(bench.subjects))
        ]
    raise ValueError(f"mode {mode!r}; expected one of {MODES}")


def pipeline_devices(config: ConfigDict) -> list[jax.Device]:
    """This host's devices that each batch is split over (`mesh.data`, -1: all)."""
    local = jax.local_devices()
    count = config.mesh.data
    if count == -1:
        return local
    if not 1 <= count <= len(local):
        raise ValueError(f"mesh.data={count}; this host has {len(local)} devices (-1: all)")
    return local[:count]


def draw(paths: RunPaths, config: ConfigDict, tasks: list[Task], progress: bool) -> int:
    """Draws the missing images; returns how many this process drew."""
    if all(t.path.exists() for t in tasks):
        return 0
    subjects = {s.name: s for t in tasks for s in t.group}
    references = {
        name: read_reference(s, config.dataset.reference_index) for name, s in subjects.items()
    }
    pipe = SubjectDiffusionPipeline.from_pretrained(
        paths.export, devices=pipeline_devices(config), batch_size=config.generation.batch_size
    )
    return generate_missing(pipe, tasks, references, config.generation, progress=progress)


def score(
    paths: RunPaths, config: ConfigDict, tasks: list[Task], progress: bool
) -> tuple[Summary, list[str], list[str]]:
    """(summary, metric names, unreadable images) of the run's images."""
    clips = [load_clip(p) for p in paths.clips]
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise ValueError(f"CLIP folders must have distinct names (they label the metrics): {names}")
    embedder = Embedder(load_dino(paths.dino), clips, config.metrics)
    subjects = {s.name: s.images for t in tasks for s in t.group}
    real = real_features(embedder, subjects)
    scores = score_tasks(embedder, tasks, real, progress=progress)
    metrics = metric_names(clips)
    return aggregate(scores, metrics), metrics, embedder.unreadable


def evaluate_dreambench(
    paths: RunPaths, config: ConfigDict, mode: str, *, progress: bool = True
) -> dict:
    """Draws what is missing, scores everything and writes the outputs; returns results.json's
    content (on process 0; other processes return after drawing)."""
    check_encoder_folders(paths.dino, paths.clips)
    dataset = config.dataset
    bench = read_dreambench(
        paths.dreambench,
        live_classes=dataset.live_classes,
        image_suffixes=dataset.image_suffixes,
        mask_folder=dataset.mask_folder,
    )
    groups = subject_groups(bench, mode, paths.pairs)
    tasks = build_tasks(
        bench, groups, config.generation.images_per_prompt, paths.out / IMAGES_FOLDER
    )
    drawn = draw(paths, config, tasks, progress)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dreambench images drawn")
        if jax.process_index() != 0:
            return {}
    summary, metrics, unreadable = score(paths, config, tasks, progress)
    clip_names = [Path(p).name for p in paths.clips]
    run = {
        "mode": mode,
        "export": str(paths.export),
        "dreambench": str(bench.root),
        "dino": str(paths.dino),
        "clip": [str(p) for p in paths.clips],
        "images_expected": len(tasks),
        "images_drawn_now": drawn,
        "images_scored": sum(v["images"] for v in summary.per_subject.values()),
        "generation": config.generation.to_dict(),
        "preprocessing": config.metrics.to_dict(),
    }
    content = results_content(summary, metrics, run, unreadable)
    out = paths.out
    write_json(out / "results.json", content)
    write_csv(
        out / "per_subject.csv",
        [{"subject": key, **values} for key, values in summary.per_subject.items()],
    )
    write_csv(out / "per_prompt.csv", content["per_prompt"])
    published = config.published[mode]
    (out / "table.md").write_text(
        markdown_table(summary, clip_names, published, f"sdjax ({paths.export.name})")
    )
    write_grids(
        out,
        tasks,
        {s.name: s.images[0] for t in tasks for s in t.group},
        config.generation.images_per_prompt,
    )
    return content
