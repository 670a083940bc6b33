"""Training: sharded steps equal the single-device step, resume after SIGTERM, non-finite losses."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data.build_sample import build_sample_records
from sdjax import sharding, trainer
from sdjax.input_pipeline import pipeline
from sdjax.training import trainable
from tests.interrupt import sigterm_at_step
from tests.training_config import micro_config

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # float32, max abs difference of loss and updated parameters


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return ",".join(build_sample_records(tmp_path_factory.mktemp("sample")))


@pytest.fixture(scope="module")
def config(records):
    return micro_config(records)


@pytest.fixture(scope="module")
def batch(config):
    return next(pipeline.make_iterator(config.data))


@pytest.fixture(scope="module")
def model(config):
    """One initialisation, placed on every mesh the tests use."""
    return trainer.init_model(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))


def _one_step(config, mesh, batch, model, **build):
    run = trainer.build_run(config, mesh, model, **build)
    state, metrics = run.step_fn(
        run.state, run.frozen, trainer.global_batch(batch, sharding.batch_sharding(mesh))
    )
    return jax.device_get(state.params), jax.device_get(metrics), state


@pytest.fixture(scope="module")
def single_device_step(config, batch, model):
    return _one_step(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]), batch, model)


@pytest.mark.parametrize("shape", [{"data": 8}, {"data": 2, "fsdp": 4}, {"fsdp": 8}])
def test_sharded_step_matches_single_device(config, batch, model, single_device_step, shape):
    params_1, metrics_1, _ = single_device_step
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, **shape})
    params_n, metrics_n, state = _one_step(config, mesh, batch, model)
    assert abs(float(metrics_n["loss"]) - float(metrics_1["loss"])) <= TOLERANCE
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params_n, params_1)
    assert max(jax.tree.leaves(diffs)) <= TOLERANCE
    if shape.get("fsdp") == 8:
        leaves = jax.tree.leaves(state.params)
        total = sum(x.nbytes for x in leaves)
        per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves)
        assert per_device <= total / 6, (per_device, total)


def _metrics(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    timing = {"step_time", "examples_per_second"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


def _final_params(result):
    return jax.device_get(result.state.params)


@pytest.fixture(scope="module")
def straight_and_resumed(config, tmp_path_factory):
    """The same 6 steps run straight, and run to step 3, stopped by SIGTERM, then resumed; the
    interrupted run saves through the asynchronous checkpointer (the default)."""
    steps, root = 6, tmp_path_factory.mktemp("runs")
    straight = config.copy_and_resolve_references()
    straight.train.num_steps = steps
    reference = trainer.train(straight, root / "straight")
    interrupted = straight.copy_and_resolve_references()
    interrupted.train.async_checkpoints = True
    first = trainer.train(interrupted, root / "resumed", make_batches=sigterm_at_step(3))
    latest = trainer.checkpointer(interrupted, root / "resumed").latest_step()
    resumed = trainer.train(interrupted, root / "resumed")
    return straight, root, reference, first, latest, resumed


def test_a_finished_run_restores_without_compiling(straight_and_resumed):
    config, root, reference, *_ = straight_and_resumed
    again = trainer.train(config, root / "straight")
    assert again.step == config.train.num_steps and again.compilations == 0
    same = jax.tree.map(np.array_equal, _final_params(again), _final_params(reference))
    assert all(jax.tree.leaves(same))


def test_sigterm_then_resume_equals_straight_run(straight_and_resumed):
    config, root, reference, first, latest, resumed = straight_and_resumed
    assert first.step == 3 and first.preempted and latest == 3  # saved, loop left early
    assert reference.step == resumed.step == config.train.num_steps
    assert reference.compilations == resumed.compilations == 1
    got, want = _metrics(root / "resumed"), _metrics(root / "straight")
    assert [m["step"] for m in got] == list(range(1, config.train.num_steps + 1))
    assert got == want
    same = jax.tree.map(np.array_equal, _final_params(resumed), _final_params(reference))
    assert all(jax.tree.leaves(same))


@pytest.mark.parametrize("shape", [{"data": 1, "num_devices": 1}, {"data": 2, "fsdp": 4}])
def test_restore_onto_another_mesh(straight_and_resumed, model, shape):
    config, root, reference, *_ = straight_and_resumed
    moved = config.copy_and_resolve_references()
    moved.mesh.update({"data": 1, "fsdp": 1, "num_devices": -1, **shape})
    mesh = trainer.make_run_mesh(moved)
    target = trainer.build_run(moved, mesh, model).state
    restored = trainer.checkpointer(moved, root / "straight").restore_state(
        config.train.num_steps, target
    )
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding.mesh.devices.size == mesh.devices.size
    same = jax.tree.map(np.array_equal, jax.device_get(restored.params), _final_params(reference))
    assert all(jax.tree.leaves(same))


class _PoisonedBatches:
    """The real pipeline, with NaN images from batch `at` on."""

    def __init__(self, inner, at):
        self.inner, self.at, self.count = inner, at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __next__(self):
        batch = next(self.inner)
        self.count += 1
        if self.count >= self.at:
            batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
        return batch


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(config, model, tmp_path):
    run = config.copy_and_resolve_references()
    run.train.num_steps = 4
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite loss"):
        trainer.train(
            run, tmp_path, make_batches=lambda cfg: _PoisonedBatches(pipeline.make_iterator(cfg), 3)
        )
    checkpoints = trainer.checkpointer(run, tmp_path)
    assert checkpoints.latest_step() == 2
    restored = checkpoints.restore_state(
        2, trainer.build_run(run, trainer.make_run_mesh(run)).state
    )
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored.params)))


def test_nonfinite_step_drops_the_update(config, batch, model):
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    run = trainer.build_run(config, mesh, model)
    poisoned = {**batch, "image": np.full_like(batch["image"], np.nan)}
    before = jax.device_get(run.state.params)
    after, metrics = run.step_fn(
        run.state, run.frozen, trainer.global_batch(poisoned, sharding.batch_sharding(mesh))
    )
    assert not np.isfinite(float(metrics["loss"]))
    assert int(after.skipped) == 1 and int(after.step) == 1
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), jax.device_get(after.params), before
    )
    assert all(jax.tree.leaves(same))


def test_remat_step_equals_plain_step(config, batch, single_device_step):
    """Rematerialising the UNet, CLIP and text encoder blocks leaves the step unchanged."""
    remat = config.copy_and_resolve_references()
    remat.model.remat = True
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    params_r, metrics_r, _ = _one_step(remat, mesh, batch, trainer.init_model(remat, mesh))
    params_1, metrics_1, _ = single_device_step
    assert abs(float(metrics_r["loss"]) - float(metrics_1["loss"])) <= TOLERANCE
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params_r, params_1)
    assert max(jax.tree.leaves(diffs)) <= TOLERANCE


def test_bfloat16_step_with_frozen_kernels_in_bfloat16_is_unchanged(config, batch):
    """Frozen kernels stored in the compute dtype give the very same step, with half the bytes."""
    bf16 = config.copy_and_resolve_references()
    bf16.model.dtype = "bfloat16"
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    model = trainer.init_model(bf16, mesh)
    frozen = trainer.build_run(bf16, mesh, model).frozen
    dtypes = {trainable.path_string(p): v.get_value().dtype for p, v in nnx.to_flat_state(frozen)}
    assert dtypes["unet/conv_out/kernel"] == jnp.bfloat16
    assert dtypes["image_encoder/vision_model/embeddings/patch_embedding/kernel"] == jnp.bfloat16
    assert dtypes["unet/conv_out/bias"] == jnp.float32  # rank 1: kept
    assert dtypes["vae/encoder/conv_in/kernel"] == jnp.float32  # the VAE computes in float32
    params_a, metrics_a, _ = _one_step(bf16, mesh, batch, model)
    params_b, metrics_b, _ = _one_step(bf16, mesh, batch, model, frozen_as_computed=False)
    assert float(metrics_a["loss"]) == float(metrics_b["loss"])
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params_a, params_b)
    assert all(jax.tree.leaves(same))


def test_the_step_compiled_ahead_fits_the_built_state(config, model):
    """The step compiled from abstract parameters (beside the loading) is the one the loop calls:
    its state and frozen weights agree leaf by leaf with the built ones; a cast leaf is caught."""
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8}, jax.devices())
    abstract = trainer.abstract_run(config, mesh)
    built = trainer.build_run(config, mesh, model)
    expected, found = (abstract.state, abstract.frozen), (built.state, built.frozen)
    assert trainer.signature_differences(expected, found) == []
    cast = jax.tree.map(lambda x: x.astype(jnp.bfloat16), built.frozen)
    differences = trainer.signature_differences(expected, (built.state, cast))
    assert len(differences) == len(jax.tree.leaves(built.frozen))
    assert "bfloat16" in differences[0]


def test_the_trainer_module_imports_neither_tensorflow_nor_transformers():
    """TensorFlow loads where the input starts (`trainer.read_batches`: on the main thread, while
    the step compiles on the worker), transformers where a tokenizer is made."""
    heavy = "sorted({'tensorflow', 'transformers'} & set(sys.modules))"
    code = f"import sys\nimport sdjax.trainer\nprint({heavy})"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
