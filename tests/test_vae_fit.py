"""Fitting a VAE on record images: the loss, the reader, the fit, its export and its stage."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from flax import nnx
from ml_collections import ConfigDict
from PIL import Image

from configs.toy_world import vae_fit_config
from sdjax.input_pipeline import schema
from sdjax.models.init import init_module
from sdjax.models.vae import AutoencoderKL, DiagonalGaussian, VAEConfig
from sdjax.stages import Stage
from sdjax.training import vae_fit, vae_images
from sdjax.weights import load_vae

REPO = Path(__file__).resolve().parents[1]
NUM_RECORDS = 40
HOLDOUT_EVERY = 5
TINY_VAE = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)


def scene(rng: np.random.Generator, height: int = 40, width: int = 48) -> np.ndarray:
    """A smooth two-colour gradient with one solid rectangle, uint8 (not square: it gets cropped)."""
    t = np.linspace(0.0, 1.0, width)[None, :, None]
    a, b = rng.uniform(0, 255, (2, 1, 1, 3))
    image = np.broadcast_to(a + (b - a) * t, (height, width, 3)).copy()
    y, x = rng.integers(4, 20, 2)
    image[y : y + 14, x : x + 16] = rng.uniform(0, 255, 3)
    return image.astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def write_records(folder: Path, count: int = NUM_RECORDS, shards: int = 2) -> str:
    """`count` records of distinct scenes (no entities) in `shards` files; returns their glob."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(folder / f"images-{i}.tfrecord")) for i in range(shards)]
    for i in range(count):
        image = scene(rng)
        example = schema.ImageExample(
            key=f"scene-{i}",
            image_encoded=png(image),
            image_format="png",
            height=image.shape[0],
            width=image.shape[1],
            caption="a scene",
            caption_ids=(),
            entities=(),
        )
        writers[i * shards // count].write(schema.encode_example(example))
    for writer in writers:
        writer.close()
    return str(folder / "images-*.tfrecord")


def fit_config(pattern: str, num_steps: int = 80) -> ConfigDict:
    """The toy world's `vae_fit` section, shrunk: a two-level VAE on 32 px images."""
    c = ConfigDict()
    c.vae_fit = vae_fit_config()
    c.vae_fit.update(
        file_pattern=pattern,
        resolution=32,
        batch_size=8,
        num_steps=num_steps,
        learning_rate=3e-3,
        warmup=5,
        log_every=10,
        checkpoint_every=num_steps // 2,
        eval_images=8,
        holdout_every=HOLDOUT_EVERY,
        shuffle_buffer=16,
    )
    c.model = ConfigDict({"vae": TINY_VAE})
    return c


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> str:
    return write_records(tmp_path_factory.mktemp("records"))


@pytest.fixture(scope="module")
def fitted(records, tmp_path_factory) -> tuple[ConfigDict, Path, vae_fit.FitResult]:
    config = fit_config(records)
    workdir = tmp_path_factory.mktemp("fit")
    return config, workdir, vae_fit.fit_vae(config, workdir)


def copy_of(workdir: Path, tmp_path: Path) -> Path:
    """A copy of a fit's folder, for tests that damage it."""
    return Path(shutil.copytree(workdir, tmp_path / "fit"))


def test_loss_matches_numpy():
    vae = init_module(lambda rngs: AutoencoderKL(VAEConfig(**TINY_VAE), rngs=rngs), 0)
    graphdef, params = nnx.split(vae)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    key, kl_weight = jax.random.key(3), 0.25

    loss, parts = jax.jit(lambda p, x: vae_fit.vae_loss(nnx.merge(graphdef, p), x, key, kl_weight))(
        params, images
    )

    posterior = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))(params, images)
    mean, logvar = np.asarray(posterior.mean, np.float64), np.asarray(posterior.logvar, np.float64)
    assert np.ptp(logvar) > 0.1  # a posterior of varied width
    noise = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    latents = (mean + np.exp(0.5 * logvar) * noise).astype(np.float32)
    decoded = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))(params, latents)
    mae = np.mean(np.abs(np.asarray(decoded, np.float64) - images))
    kl = 0.5 * np.mean(mean**2 + np.exp(logvar) - 1.0 - logvar)
    np.testing.assert_allclose(float(parts["reconstruction"]), mae, rtol=1e-5)
    np.testing.assert_allclose(float(parts["kl"]), kl, rtol=1e-5)
    np.testing.assert_allclose(float(loss), mae + kl_weight * kl, rtol=1e-5)
    standard = DiagonalGaussian(mean=jnp.zeros((1, 2, 2, 4)), logvar=jnp.zeros((1, 2, 2, 4)))
    assert float(vae_fit.kl_divergence(standard)) == 0.0


def test_posterior_starts_narrow(records):
    config = fit_config(records)
    images = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    logvar = vae_fit.build_vae(config).encode(images).logvar
    np.testing.assert_array_equal(np.asarray(logvar), config.vae_fit.init_logvar)


def test_reader_splits_and_repeats_deterministically(records):
    cfg = fit_config(records).vae_fit
    files = sorted(str(p) for p in Path(records).parent.glob("*.tfrecord"))
    held_out = vae_images.first_images(files, cfg, held_out=True, count=100)
    training = vae_images.first_images(files, cfg, held_out=False, count=100)
    assert held_out.shape == (NUM_RECORDS // HOLDOUT_EVERY, 32, 32, 3)
    assert len(training) == NUM_RECORDS - len(held_out)
    assert held_out.min() >= -1.0 and held_out.max() <= 1.0
    distance = np.abs(held_out[:, None] - training[None]).mean(axis=(2, 3, 4))
    assert distance.min() > 0.01  # no held-out image is among the training images

    def first_batches(n: int) -> list[np.ndarray]:
        batches = vae_images.ImageBatches(vae_images.training_dataset(files, cfg))
        return [next(batches) for _ in range(n)]

    epoch = len(training) // cfg.batch_size
    one, two = first_batches(epoch + 2), first_batches(epoch + 2)  # past the end of one epoch
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    assert one[0].shape == (cfg.batch_size, 32, 32, 3) and one[0].dtype == np.float32


def test_fit_lowers_held_out_error(fitted):
    config, workdir, result = fitted
    assert result.complete and not result.reused
    assert (result.step, result.start_step) == (config.vae_fit.num_steps, 0)
    assert result.final_mae < 0.5 * result.initial_mae, result
    grid = np.asarray(Image.open(workdir / vae_fit.GRID_FILE))
    assert grid.shape == (2 * 32, config.vae_fit.eval_images * 32, 3)
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert logged[0] == {"step": 0, "eval/mae": result.initial_mae}
    assert logged[-1]["eval/mae"] == result.final_mae
    assert list((workdir / "tensorboard").iterdir())


def test_export_loads_in_sdjax_and_diffusers(fitted):
    _, _, result = fitted
    exported = json.loads((result.export_dir / vae_fit.CONFIG_FILE).read_text())
    assert exported["scaling_factor"] == pytest.approx(result.scaling_factor)
    assert 0.1 < result.scaling_factor < 100.0

    ours = load_vae(result.export_dir)
    theirs = TorchAutoencoderKL.from_pretrained(str(result.export_dir)).eval()
    assert ours.config.scaling_factor == pytest.approx(theirs.config.scaling_factor)
    latents = np.random.default_rng(2).normal(size=(2, 16, 16, 4)).astype(np.float32)
    with torch.no_grad():
        reference = theirs.decode(torch.from_numpy(latents).permute(0, 3, 1, 2)).sample
    np.testing.assert_allclose(
        np.asarray(ours.decode(latents)), reference.permute(0, 2, 3, 1).numpy(), atol=1e-4
    )


def test_finished_fit_is_reused(fitted):
    config, workdir, result = fitted
    again = vae_fit.fit_vae(config, workdir)
    assert again.reused and again.complete
    assert (again.step, again.final_mae, again.scaling_factor) == (
        result.step,
        result.final_mae,
        result.scaling_factor,
    )
    assert Stage(workdir).is_complete(vae_fit.stage_settings(config))


def test_the_fit_is_keyed_by_the_records_bytes_not_their_paths(fitted, tmp_path):
    """The same records reached through a link (a stage folder shared between runs) reuse the
    finished fit; a record with other bytes does not."""
    config, workdir, _ = fitted
    folder = Path(config.vae_fit.file_pattern).parent
    moved = config.copy_and_resolve_references()
    (tmp_path / "linked").symlink_to(folder)
    moved.vae_fit.file_pattern = str(tmp_path / "linked" / Path(config.vae_fit.file_pattern).name)
    assert Stage(workdir).is_complete(vae_fit.stage_settings(moved))

    changed = config.copy_and_resolve_references()
    copied = Path(shutil.copytree(folder, tmp_path / "copied"))
    first = sorted(copied.glob("*.tfrecord"))[0]
    first.write_bytes(first.read_bytes()[:-1])
    changed.vae_fit.file_pattern = str(copied / Path(config.vae_fit.file_pattern).name)
    assert not Stage(workdir).is_complete(vae_fit.stage_settings(changed))


def test_corrupt_export_is_refitted(fitted, tmp_path):
    config, workdir, result = fitted
    workdir = copy_of(workdir, tmp_path)
    weights = workdir / vae_fit.EXPORT_DIR / vae_fit.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    assert not Stage(workdir).is_complete(vae_fit.stage_settings(config))

    resumed = vae_fit.fit_vae(config, workdir)  # from the last checkpoint: nothing to train
    assert not resumed.reused and resumed.start_step == resumed.step == config.vae_fit.num_steps
    assert resumed.final_mae == pytest.approx(result.final_mae, rel=1e-5)
    assert Stage(workdir).is_complete(vae_fit.stage_settings(config))
    load_vae(workdir / vae_fit.EXPORT_DIR)


def test_sigterm_saves_and_the_fit_resumes(records, tmp_path, monkeypatch):
    config, workdir = fit_config(records, num_steps=6), tmp_path / "fit"
    make_step = vae_fit.make_fit_step

    def signalling_step(*args):
        step = make_step(*args)

        def run(state, *inputs):
            state, metrics = step(state, *inputs)
            if int(state.step) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return state, metrics

        return run

    monkeypatch.setattr(vae_fit, "make_fit_step", signalling_step)
    stopped = vae_fit.fit_vae(config, workdir)
    assert (stopped.complete, stopped.step, stopped.export_dir) == (False, 3, None)
    assert not Stage(workdir).is_complete(vae_fit.stage_settings(config))
    monkeypatch.undo()

    resumed = vae_fit.fit_vae(config, workdir)
    assert (resumed.complete, resumed.start_step, resumed.step) == (True, 3, 6)
    assert Stage(workdir).is_complete(vae_fit.stage_settings(config))


def test_unreadable_checkpoint_starts_over(fitted, tmp_path):
    config, workdir, _ = fitted
    workdir = copy_of(workdir, tmp_path)
    for file in (workdir / vae_fit.CHECKPOINT_DIR).rglob("*"):
        if file.is_file():
            file.write_bytes(b"\0")
    graphdef, params = nnx.split(vae_fit.build_vae(config))
    state = vae_fit.FitState.start(params, vae_fit.make_optimizer())
    fresh = vae_images.ImageBatches(tf.data.Dataset.range(3))

    checkpoints, restored, batches, start = vae_fit.resume(
        workdir, config.vae_fit, state, lambda: fresh
    )
    checkpoints.close()
    assert start == 0 and restored is state and batches is fresh
    assert not list((workdir / vae_fit.CHECKPOINT_DIR).iterdir())


def test_cli_help():
    done = subprocess.run(
        [sys.executable, str(REPO / "fit_vae.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert "--data" in done.stdout and "--workdir" in done.stdout  # absl's --help exits 1
