"""VAE latents cached in the records: written by data/cache_latents.py, read by the pipeline,
used by the training step instead of the VAE encoder."""

import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf

from data.build_sample import build_sample_records
from data.cache_latents import cache_latents, load_frozen_vae
from sdjax import sharding, trainer
from sdjax.input_pipeline import contract, pipeline
from sdjax.input_pipeline.reasons import DataError
from tests.training_config import micro_config

REPO = Path(__file__).resolve().parents[1]
FLOAT16_TOLERANCE = 2e-3  # moments are stored in float16 (relative spacing 2**-10)
STEP_TOLERANCE = 1e-3  # the same step from float16-rounded moments


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    return build_sample_records(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def config(sample_files):
    return micro_config(",".join(sample_files), batch_size=4)


@pytest.fixture(scope="module")
def cached(config, sample_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    report = cache_latents(config, sample_files, out, batch_size=4)
    return out, report


def _reader(config, pattern: str, **changes):
    data = config.data.copy_and_resolve_references()
    data.update({"file_pattern": pattern, "crop": "centred", "shuffle_buffer": 1, **changes})
    return data


def test_every_record_is_written_and_usable_ones_get_latents(cached, sample_files):
    out, report = cached
    assert sorted(p.name for p in out.iterdir()) == sorted(p.split("/")[-1] for p in sample_files)
    assert report.cached > 0
    total = sum(1 for f in sample_files for _ in tf.data.TFRecordDataset(f))
    assert report.cached + report.copied == total


def test_reader_yields_the_moments_of_its_own_crop(config, cached):
    out, _ = cached
    data = _reader(config, str(out / "*"), cached_latents=True)
    batch = next(pipeline.make_iterator(data))
    moments = batch["latent_moments"]
    assert moments.shape == (4, *contract.latent_moments_shape(data))
    posterior = load_frozen_vae(config).encode(batch["image"])
    expected = np.concatenate([posterior.mean, posterior.logvar], axis=-1)
    np.testing.assert_allclose(moments, expected, rtol=FLOAT16_TOLERANCE, atol=FLOAT16_TOLERANCE)


def test_training_step_from_cached_latents_matches_the_encoder(config, cached):
    out, _ = cached
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    model = trainer.init_model(config, mesh)
    losses = []
    for pattern, use_cache in ((str(out / "*"), True), (config.data.file_pattern, False)):
        run_config = config.copy_and_resolve_references()
        run_config.data = _reader(config, pattern, cached_latents=use_cache)
        batch = next(pipeline.make_iterator(run_config.data))
        assert ("latent_moments" in batch) == use_cache
        run = trainer.build_run(run_config, mesh, model)
        _, metrics = run.step_fn(
            run.state, run.frozen, trainer.global_batch(batch, sharding.batch_sharding(mesh))
        )
        losses.append(float(metrics["loss"]))
    assert abs(losses[0] - losses[1]) <= STEP_TOLERANCE * abs(losses[1]), losses


def test_records_without_latents_are_bad_input(config):
    data = _reader(config, config.data.file_pattern, cached_latents=True, strict=True)
    with pytest.raises(DataError, match="no_latents"):
        next(pipeline.make_iterator(data))


def test_cached_latents_need_the_centred_crop(config, cached):
    out, _ = cached
    data = _reader(config, str(out / "*"), cached_latents=True, crop="random")
    with pytest.raises(ValueError, match="crop='centred'"):
        pipeline.build_dataset(data)


def test_command_line_caches_its_share_of_the_files(sample_files, tmp_path):
    """`data/cache_latents.py` as run by a user: the flags, this machine's share of the files,
    the report line, records the trainer's reader accepts with `cached_latents`."""
    script = [sys.executable, str(REPO / "data" / "cache_latents.py")]
    config = "--config=tests/training_config.py"
    common = [config, f"--input={','.join(sample_files)}", f"--output_dir={tmp_path}"]
    done = subprocess.run(
        [*script, *common, "--num_shards=2", "--shard_index=1", "--batch_size=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    share = sorted(sample_files)[1::2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in share)
    assert re.search(rf"\d+ records with latents, \d+ copied .*, {len(share)} files", done.stdout)
    data = micro_config(str(tmp_path / "*"), batch_size=1).data
    data.update({"crop": "centred", "shuffle_buffer": 1, "cached_latents": True})
    assert "latent_moments" in next(pipeline.make_iterator(data))

    bad = subprocess.run(
        [*script, *common, "--num_shards=2", "--shard_index=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode != 0 and "--shard_index=2 not in [0, 2)" in bad.stderr
