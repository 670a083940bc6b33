"""Pretrained weights go straight into their shardings: the trainer's load of a Stable Diffusion
folder (UNet, VAE, text encoder) and a CLIP vision folder on an 8-device FSDP mesh gives the
values of a plain load, each device holds the bytes the sharding rules give it, and no parameter
passes whole through one device on the way."""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest
from flax import nnx

from sdjax import sharding, trainer
from sdjax.weights.subject_diffusion import load_parts
from tests.test_sampling import save_tiny_parts, tiny_config

MESH = {"fsdp": 8}
PARTS = ("unet", "vae", "text_encoder", "image_encoder")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    save_tiny_parts(folder)
    config = tiny_config()
    config.model.pretrained = str(folder)
    config.model.image_encoder_path = str(folder / "image_encoder")
    return config


def _flat(module: nnx.Module) -> dict[str, jax.Array]:
    state = nnx.state(module, nnx.Param)
    return {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(state)}


def _single_device_puts(monkeypatch) -> list[tuple[int, ...]]:
    """Records the shape of every host array `jax.device_put` places on one device."""
    placed, device_put = [], jax.device_put

    def recording(x, device=None, *args, **kwargs):
        one_device = device is None or isinstance(device, jax.Device)
        if one_device and isinstance(x, np.ndarray) and x.size > 1:
            placed.append(x.shape)
        return device_put(x, device, *args, **kwargs)

    monkeypatch.setattr(jax, "device_put", recording)
    return placed


def test_pretrained_parts_load_into_their_shards(config, monkeypatch):
    reference = _flat(
        load_parts(
            config.model,
            base=config.model.pretrained,
            image_encoder=config.model.image_encoder_path,
        )
    )
    mesh = sharding.make_mesh(MESH)
    before = {id(a) for a in jax.live_arrays()}
    puts = _single_device_puts(monkeypatch)
    model = trainer.init_model(config, mesh)
    monkeypatch.undo()
    assert puts == [], f"{len(puts)} whole parameters placed on one device: {puts[:5]}"
    created = [a for a in jax.live_arrays() if id(a) not in before]
    assert created and all(len(a.sharding.device_set) == mesh.size for a in created)

    loaded = _flat(model)
    assert loaded.keys() == reference.keys()
    assert {k.split("/")[0] for k in loaded} >= set(PARTS)
    differ = [k for k in loaded if not np.array_equal(jax.device_get(loaded[k]), reference[k])]
    assert not differ, differ

    expected = sharding.state_shardings(nnx.state(model, nnx.Param), mesh)
    expected = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(expected)}
    held, ruled, total = collections.Counter(), collections.Counter(), 0
    for key, array in loaded.items():
        rule = (
            expected[key].get_value() if isinstance(expected[key], nnx.Variable) else expected[key]
        )
        assert array.sharding.is_equivalent_to(rule, array.ndim), (key, array.sharding, rule)
        shard_bytes = int(np.prod(rule.shard_shape(array.shape))) * array.dtype.itemsize
        for device in mesh.devices.flat:
            ruled[device.id] += shard_bytes
        for shard in array.addressable_shards:
            held[shard.device.id] += shard.data.nbytes
        total += array.nbytes
    assert held == ruled, (held, ruled)
    assert max(held.values()) < total / 4, (held, total)  # most bytes are split eight ways
