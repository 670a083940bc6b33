"""The compiled step kept in the run directory (`sdjax.training.saved_step`): found only by the
same source, config and devices, loaded only for the same inputs, never trusted when damaged."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from sdjax import sharding
from sdjax.training import saved_step


def _step(state, batch):
    return {"w": state["w"] * 0.5 + batch.mean()}, (batch**2).sum()


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh({"data": 1}, jax.devices()[:1])


@pytest.fixture(scope="module")
def compiled(mesh):
    placed = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32, sharding=placed)}
    batch = jax.ShapeDtypeStruct((2, 3), jnp.float32, sharding=placed)
    return jax.jit(_step, donate_argnums=(0,)).lower(state, batch).compile()


def test_a_saved_step_loads_and_computes_the_same(tmp_path, mesh, compiled):
    path = saved_step.save(tmp_path, "abc", compiled)
    assert path == saved_step.path_of(tmp_path, "abc") and path.is_file()
    loaded = saved_step.load(tmp_path, "abc", mesh)
    w, batch = np.arange(12, dtype=np.float32).reshape(4, 3), np.ones((2, 3), np.float32)
    state, loss = loaded({"w": jnp.asarray(w)}, jnp.asarray(batch))
    np.testing.assert_allclose(state["w"], w * 0.5 + 1.0)
    assert float(loss) == 6.0
    assert saved_step.load(tmp_path, "other", mesh) is None
    saved_step.save(tmp_path, "def", compiled)  # a new key replaces the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved_step.path_of(tmp_path, "def").name]


def test_a_damaged_file_is_reported_and_not_loaded(tmp_path, mesh, compiled, caplog):
    path = saved_step.save(tmp_path, "abc", compiled)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING):
        assert saved_step.load(tmp_path, "abc", mesh) is None
    assert "cannot be loaded" in caplog.text and str(path) in caplog.text


def test_differences_name_every_input_it_was_not_compiled_for(mesh, compiled):
    placed = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch = jnp.ones((2, 3), jnp.float32, device=placed)
    assert saved_step.differences(compiled, {"w": jnp.ones((4, 3), device=placed)}, batch) == []
    wrong_shape = saved_step.differences(compiled, {"w": jnp.ones((4, 2), device=placed)}, batch)
    assert len(wrong_shape) == 1 and "input 0" in wrong_shape[0]
    wrong_dtype = saved_step.differences(compiled, {"w": jnp.ones((4, 3), jnp.bfloat16)}, batch)
    assert len(wrong_dtype) == 1 and "bfloat16" in wrong_dtype[0]
    other_tree = saved_step.differences(compiled, {"v": jnp.ones((4, 3))}, batch)
    assert len(other_tree) == 1 and other_tree[0].startswith("input tree")


def test_the_fingerprint_follows_source_config_and_devices(tmp_path, mesh, monkeypatch):
    config = ConfigDict({"train": {"lr": 1e-3}})
    key = saved_step.fingerprint(config, mesh)
    assert saved_step.fingerprint(config, mesh) == key
    config.train.lr = 2e-3
    assert saved_step.fingerprint(config, mesh) != key
    config.train.lr = 1e-3
    two = sharding.make_mesh({"data": 2}, jax.devices()[:2])
    assert saved_step.fingerprint(config, two) != key
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    assert saved_step.fingerprint(config, mesh) != key
    (tmp_path / "a.py").write_text("x = 1\n")
    before = saved_step.source_digest(tmp_path)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert saved_step.source_digest(tmp_path) != before
