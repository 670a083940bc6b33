"""Training: sharded steps equal the single-device step, resume after SIGTERM, non-finite losses."""


import jax
import numpy as np
import pytest

from data.build_sample import build_sample_records
from sdjax import sharding, trainer
from sdjax.input_pipeline import pipeline
from tests.training_config import micro_config

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


def _one_step(config, mesh, batch):
    run = trainer.build_run(config, mesh)
    state, metrics = run.step_fn(
        run.state, run.frozen, trainer.global_batch(batch, sharding.batch_sharding(mesh))
    )
    return jax.device_get(state.params), jax.device_get(metrics), state


@pytest.fixture(scope="module")
def single_device_step(config, batch):
    return _one_step(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]), batch)


@pytest.mark.parametrize("shape", [{"data": 8}, {"data": 2, "fsdp": 4}, {"fsdp": 8}])
def test_sharded_step_matches_single_device(config, batch, single_device_step, shape):
    params_1, metrics_1, _ = single_device_step
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, **shape})
    params_n, metrics_n, state = _one_step(config, mesh, batch)
    assert abs(float(metrics_n["loss"]) - float(metrics_1["loss"])) <= TOLERANCE
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params_n, params_1)
    assert max(jax.tree.leaves(diffs)) <= TOLERANCE
    if shape.get("fsdp") == 8:
        leaves = jax.tree.leaves(state.params)
        total = sum(x.nbytes for x in leaves)
        per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves)
        assert per_device <= total / 6, (per_device, total)
