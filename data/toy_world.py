"""Generate the toy world: training records and held-out evaluation scenes.

    python data/toy_world.py --config=configs/toy_world.py --workdir=runs/toy_world
    python data/toy_world.py --workdir=/tmp/world --config.world.num_images=100

Everything goes under WORKDIR/world/: `source/` (PNG images and masks, `manifest.jsonl`),
`records/` (sharded TFRecords, `docs/data.md`) and `eval.json` (held-out scenes, read with
`sdjax.toy_world.world.load_eval_scenes`). A finished world made with the same `config.world` is
reused; a changed setting or a corrupt file rebuilds it. The same seed gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `data` and `sdjax` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.layout import shard_files  # noqa: E402
from sdjax.stages import Stage  # noqa: E402
from sdjax.toy_world.world import (  # noqa: E402
    SUBJECT_COUNTS,
    EvalSet,
    Scene,
    caption,
    configured_scene,
    load_eval_scenes,
    render_scene,
    write_eval_file,
)

REPO = Path(__file__).resolve().parents[1]
STAGE_FOLDER = "world"
SOURCE_FOLDER = "source"
RECORDS_FOLDER = "records"
EVAL_FILE = "eval.json"
MANIFEST = "manifest.jsonl"
# Independent random streams of one seed: training scenes and evaluation scenes.
TRAIN_STREAM, EVAL_STREAM = 0, 1

__all__ = ["WorldFiles", "generate_world", "load_eval_scenes"]


@dataclasses.dataclass(frozen=True)
class WorldFiles:
    """A generated world: its record shards (the reader's input) and its evaluation scenes."""

    record_files: list[str]
    eval_file: Path


def training_scenes(world: ml_collections.ConfigDict) -> Iterator[Scene]:
    """The world's training scenes, in order (training looks only)."""
    rng = np.random.default_rng([world.seed, TRAIN_STREAM])
    for _ in range(world.num_images):
        yield configured_scene(rng, world, held_out=False)


def evaluation_scenes(world: ml_collections.ConfigDict) -> dict[int, list[Scene]]:
    """`num_eval` held-out scenes per number of subjects, from their own random stream."""
    rng = np.random.default_rng([world.seed, EVAL_STREAM])
    return {
        count: [configured_scene(rng, world, True, count) for _ in range(world.num_eval)]
        for count in SUBJECT_COUNTS
    }


def _save_png(array: np.ndarray, path: Path) -> str:
    Image.fromarray(array).save(path, "PNG")
    return path.name


def write_example(folder: Path, key: str, scene: Scene, world: ml_collections.ConfigDict) -> dict:
    """Renders a scene into `folder` (images/, masks/); returns its manifest line."""
    image, masks = render_scene(scene, world.image_size, world.pattern_period)
    entities = []
    for index, (subject, mask) in enumerate(zip(scene.subjects, masks, strict=True)):
        name = _save_png(mask.astype(np.uint8) * 255, folder / "masks" / f"{key}_{index}.png")
        entities.append(
            {"label": subject.cls, "box": list(subject.box), "mask": f"masks/{name}", "score": 1.0}
        )
    name = _save_png(image, folder / "images" / f"{key}.png")
    return {"image": f"images/{name}", "caption": caption(scene), "key": key, "entities": entities}


def write_source(world: ml_collections.ConfigDict, folder: Path) -> Path:
    """Renders the training scenes as PNG files and a JSONL manifest; returns the manifest."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    scenes = training_scenes(world)
    lines = [
        json.dumps(write_example(folder, f"{i:06d}", scene, world))
        for i, scene in enumerate(
            tqdm(scenes, total=world.num_images, desc="rendering the world", unit=" images")
        )
    ]
    manifest = folder / MANIFEST
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _world_files(folder: Path) -> WorldFiles:
    return WorldFiles(shard_files(folder / RECORDS_FOLDER), folder / EVAL_FILE)


def generate_world(world_config: ml_collections.ConfigDict, directory: str | Path) -> WorldFiles:
    """Builds (or reuses) the world of `world_config` under `directory/world`."""
    stage = Stage(Path(directory) / STAGE_FOLDER)
    settings = world_config.to_dict()
    if stage.is_complete(settings):
        return _world_files(stage.directory)
    from data.manifest import ManifestSource  # noqa: PLC0415 (TensorFlow: only to build)
    from data.sdd_builder import build  # noqa: PLC0415

    stage.reset()
    manifest = write_source(world_config, stage.directory / SOURCE_FOLDER)
    result = build(
        ManifestSource((str(manifest),)),
        stage.directory / RECORDS_FOLDER,
        num_shards=world_config.num_shards,
    )
    print(result.report.summary())
    eval_set = EvalSet(
        world_config.image_size, world_config.pattern_period, evaluation_scenes(world_config)
    )
    write_eval_file(stage.directory / EVAL_FILE, eval_set)
    files = _world_files(stage.directory)
    stage.mark_complete([*files.record_files, files.eval_file], settings)
    return files


def define_flags() -> None:
    """The CLI's flags (defined when run as a program, so importing this module defines none)."""
    config_flags.DEFINE_config_file(
        "config",
        str(REPO / "configs" / "toy_world.py"),
        "Config file with a `world` section (a get_config() returning a ConfigDict).",
    )
    flags.DEFINE_string("workdir", None, "Run directory; the world goes to WORKDIR/world.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or config.get("workdir")
    if not workdir:
        raise app.UsageError("give --workdir (or a config with a workdir)")
    files = generate_world(config.world, workdir)
    print(*files.record_files, files.eval_file, sep="\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
