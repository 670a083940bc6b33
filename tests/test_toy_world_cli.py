"""The default run end to end through the real CLIs, at micro sizes: the world's records → a VAE
fitted on them → an image encoder pre-fitted on their subjects → Subject-Diffusion steps with both
frozen → export → `sample.py` with a
reference drawn outside the renderer; then the learning benchmark's sampling and scoring."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.toy_world import SETTINGS
from configs import toy_world
from sdjax.sampling import SubjectDiffusionPipeline
from sdjax.toy_world.benchmark import sample_scenes
from sdjax.toy_world.world import read_eval_file
from sdjax.weights import load_vae
from sdjax.weights.clip import load_image_encoder

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
MICRO = [
    "--config.world.num_images=24",
    "--config.world.num_shards=2",
    "--config.world.num_eval=2",
    "--config.vae_fit.num_steps=4",
    "--config.vae_fit.batch_size=4",
    "--config.vae_fit.eval_images=4",
    "--config.vae_fit.checkpoint_every=4",
    "--config.encoder_fit.num_steps=3",
    "--config.encoder_fit.batch_size=8",
    "--config.encoder_fit.pool_scenes=4",
    "--config.encoder_fit.pool_drawings=4",
    "--config.encoder_fit.eval_scenes=2",
    "--config.encoder_fit.eval_drawings=2",
    f"--config.train.num_steps={STEPS}",
    f"--config.train.checkpoint_every={STEPS}",
    "--config.train.sample_every=0",
    "--config.data.batch_size=8",
    "--config.data.shuffle_buffer=8",
]


def train(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "train.py", f"--workdir={workdir}", *MICRO, *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = tmp_path_factory.mktemp("toy") / "run"
    done = train(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, done


def test_every_stage_leaves_its_output(run):
    workdir, done = run
    assert len(list((workdir / "world" / "records").rglob("sdd-train.tfrecord-*"))) == 2
    assert (workdir / "world" / "eval.json").is_file()
    vae = load_vae(workdir / "vae" / "export")
    assert vae.downsample_factor == 4
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["vae_path"] == str(workdir / "vae" / "export")
    fitted = json.loads((workdir / "vae" / "export" / "config.json").read_text())
    exported = json.loads((workdir / "export" / "vae" / "config.json").read_text())
    assert exported["scaling_factor"] == pytest.approx(fitted["scaling_factor"])
    assert "vae_scaling_factor" not in config["train"]  # the VAE's config is the one source
    assert config["model"]["image_encoder_path"] == str(workdir / "image_encoder" / "export")
    steps = [
        json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps[-1] == STEPS
    assert "exported for sampling" in done.stdout


def test_the_export_holds_the_fitted_vae_unchanged(run):
    workdir, _ = run
    latents = np.random.default_rng(0).normal(size=(1, 16, 16, 8)).astype(np.float32)
    fitted = load_vae(workdir / "vae" / "export").decode(latents)
    exported = load_vae(workdir / "export").decode(latents)
    np.testing.assert_array_equal(np.asarray(exported), np.asarray(fitted))


def test_the_export_holds_the_pre_fitted_image_encoder_unchanged(run):
    workdir, _ = run
    pixels = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    fitted = load_image_encoder(workdir / "image_encoder" / "export")(pixels)
    exported = load_image_encoder(workdir / "export")(pixels)
    for a, b in zip(exported, fitted, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_second_run_reuses_every_stage(run):
    workdir, _ = run
    stages = ("world", "vae", "image_encoder")
    marks = {s: (workdir / s / "STAGE.json").stat().st_mtime_ns for s in stages}
    done = train(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {s: (workdir / s / "STAGE.json").stat().st_mtime_ns for s in stages} == marks


def test_finished_stages_are_found_without_tensorflow(run):
    """A resumed default run checks its cached stages without loading TensorFlow: it loads in
    the trainer's input start, while the step compiles or loads on the worker."""
    workdir, _ = run
    code = f"""
import functools
import sys
from pathlib import Path
import train
from configs import toy_world
config = toy_world.get_config()
for flag in {MICRO!r}:
    path, value = flag.removeprefix("--config.").split("=")
    *sections, name = path.split(".")
    section = functools.reduce(getattr, sections, config)
    setattr(section, name, type(getattr(section, name))(value))
train.prepare_toy_world(config, Path({str(workdir)!r}))
print(sorted({{"tensorflow", "tensorflow_datasets"}} & set(sys.modules)))
"""
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_sample_cli_draws_a_painted_reference(run, tmp_path):
    workdir, _ = run
    command = [
        sys.executable,
        "sample.py",
        f"--checkpoint={workdir / 'export'}",
        "--prompt=a star on the grass",
        "--subject=data/references/star.png",
        "--box=0.1,0.2,0.6,0.8",
        "--steps=2",
        "--num_images=2",
        f"--out={tmp_path}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Image.open(tmp_path / "image_000.png").size == (64, 64)
    assert (tmp_path / "grid.png").is_file()


def test_benchmark_samples_and_scores_held_out_scenes(run):
    workdir, _ = run
    eval_set = read_eval_file(workdir / "world" / "eval.json")
    pipeline = SubjectDiffusionPipeline.from_pretrained(workdir / "export")
    scenes = eval_set.scenes[2]
    sampled = sample_scenes(pipeline, scenes, eval_set.image_size, eval_set.pattern_period, steps=2)
    assert sampled.images.shape == (len(scenes), 64, 64, 3)
    assert [len(r.subjects) for r in sampled.results] == [2] * len(scenes)
    summary = sampled.summary()
    assert set(summary) >= {"location", "identity", "class", "scene"}
    assert all(0.0 <= v <= 1.0 for v in summary.values())


def test_every_benchmark_setting_overrides_a_key_of_the_toy_config():
    """Each ablation's `--config.x=y` flags name a key of the toy config, of the value's type,
    and change it."""
    config = toy_world.get_config()
    for name, overrides in SETTINGS.items():
        for flag in overrides:
            path, value = flag.removeprefix("--config.").split("=")
            current = functools.reduce(getattr, path.split("."), config)  # AttributeError if absent
            parsed = {"true": True, "false": False}.get(value.lower(), value)
            assert isinstance(parsed, bool) == isinstance(current, bool), (name, flag)
            assert type(current)(parsed) != current, (name, flag, current)
