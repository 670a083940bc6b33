"""Mesh construction and logical-axis sharding rules on 8 simulated CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import sdjax  # noqa: F401
from sdjax import sharding
from sdjax.models import layers


def test_mesh_shape_resolves_minus_one():
    assert sharding.mesh_shape({"data": 2, "fsdp": -1}, 8) == {"data": 2, "fsdp": 4}
    assert sharding.mesh_shape({"data": -1, "fsdp": 1}, 8) == {"data": 8, "fsdp": 1}


@pytest.mark.parametrize(
    "bad", [{"data": 3, "fsdp": -1}, {"data": -1, "fsdp": -1}, {"data": 4, "fsdp": 4}]
)
def test_mesh_shape_rejects(bad):
    with pytest.raises(ValueError, match="mesh"):
        sharding.mesh_shape(bad, 8)


def test_logical_to_spec_divisibility_and_single_use():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    rules = sharding.FSDP_RULES
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 32), mesh, rules) == P("fsdp", None)
    assert sharding.logical_to_spec(("embed", "mlp"), (6, 32), mesh, rules) == P(None, "fsdp")
    assert sharding.logical_to_spec(("embed", "mlp"), (6, 6), mesh, rules) == P(None, None)
    assert sharding.logical_to_spec(("norm",), (64,), mesh, rules) == P(None)


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        self.conv = layers.conv(8, 16, 3, rngs=rngs)
        self.dense = layers.linear(16, 32, rngs=rngs)
        self.norm = layers.LayerNorm(32, rngs=rngs)


def test_fsdp_shards_parameters_bytes():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8})
    model = _Tiny(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    shardings = sharding.state_shardings(state, mesh)
    placed = jax.device_put(state, shardings)
    total = sum(x.nbytes for x in jax.tree.leaves(placed))
    per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(placed))
    assert placed["dense"]["kernel"][...].sharding.spec == P("fsdp", None)
    assert per_device < total / 4
    np.testing.assert_array_equal(
        np.asarray(placed["dense"]["kernel"][...]), np.asarray(model.dense.kernel[...])
    )


def test_batch_sharding_splits_leading_axis():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    x = jax.device_put(jnp.arange(16.0).reshape(8, 2), sharding.batch_sharding(mesh))
    assert x.addressable_shards[0].data.shape == (1, 2)
