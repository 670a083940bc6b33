"""The image encoder's pre-fit: labelled references of the world, a fit that learns, its export in
transformers' layout, and the stage cache."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from ml_collections import ConfigDict
from transformers import CLIPVisionModelWithProjection as TorchCLIPVision

from configs import toy_world
from sdjax import sharding
from sdjax.models.image_encoder import CLIPVisionConfig
from sdjax.toy_world import references, world
from sdjax.toy_world.evaluate import nearest_name
from sdjax.trainer import load_fitted_image_encoder
from sdjax.training.encoder_fit import ALL_RIGHT, fit_image_encoder
from sdjax.weights.clip import load_image_encoder


def micro_config() -> ConfigDict:
    c = toy_world.get_config()
    c.model.image_encoder = toy_world.clip_config(image_size=32, patch_size=8)
    c.model.image_encoder.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    c.model.image_encoder.projection_dim = 32
    f = c.encoder_fit
    f.update(num_steps=400, batch_size=64, learning_rate=3e-3, warmup=10, log_every=50)
    f.update(pool_scenes=100, pool_drawings=200, eval_scenes=20, eval_drawings=100)
    return c


def unnormalised(pixels: np.ndarray, data: ConfigDict) -> np.ndarray:
    """CLIP-normalised references back to uint8-range RGB."""
    mean, std = np.array(data.augment.clip_mean), np.array(data.augment.clip_std)
    return (pixels * std + mean) * 255.0


def painted_colour(image: np.ndarray) -> str:
    """The named colour of a reference's painted pixels (neither white nor black)."""
    spread = image.max(-1) - image.min(-1)
    return nearest_name(np.median(image[spread > 100], axis=0), world.COLOURS)


def test_drawings_hold_the_looks_their_labels_name():
    config = micro_config()
    rng = np.random.default_rng(0)
    for held_out in (False, True):
        drawn = references.drawings(
            rng, 40, config.world, config.data, held_out, (24, 128), (0.0, 0.15)
        )
        assert drawn.pixels.shape == (40, 32, 32, 3)
        colours = tuple(world.COLOURS)
        for image, colour in zip(drawn.pixels, drawn.labels["colour"], strict=True):
            assert painted_colour(unnormalised(image, config.data)) == colours[colour]
        for c, k, p in zip(*(drawn.labels[n] for n in ("class", "colour", "pattern")), strict=True):
            look = world.Look(colours[k], world.PATTERNS[p])
            assert (look in world.HELD_OUT_LOOKS[world.CLASSES[c]]) == held_out


def test_cut_outs_are_every_subject_of_the_scenes_as_the_reader_cuts_them():
    config = micro_config()
    cut = references.cut_outs(np.random.default_rng(1), 30, config.world, config.data, False)
    assert len(cut) >= 30 and cut.pixels.shape[1:] == (32, 32, 3)
    colours = tuple(world.COLOURS)
    found = [painted_colour(unnormalised(image, config.data)) for image in cut.pixels]
    named = [colours[k] for k in cut.labels["colour"]]
    assert np.mean([a == b for a, b in zip(found, named, strict=True)]) >= 0.95


@pytest.mark.parametrize("source", ["drawings", "cut_outs"])
def test_references_are_patterned_at_the_worlds_period(source):
    """The same subjects at another world period: patterned looks change, solid ones do not."""
    config = micro_config()

    def draw(period: float) -> references.LabelledReferences:
        config.world.pattern_period = period
        rng = np.random.default_rng(2)
        if source == "drawings":
            return references.drawings(
                rng, 40, config.world, config.data, False, (64, 64), (0.05, 0.05)
            )
        return references.cut_outs(rng, 20, config.world, config.data, False)

    default, coarse = draw(world.DEFAULT_PERIOD), draw(2 * world.DEFAULT_PERIOD)
    for name in default.labels:
        np.testing.assert_array_equal(default.labels[name], coarse.labels[name])
    changed = np.abs(default.pixels - coarse.pixels).max(axis=(1, 2, 3)) > 0.1
    solid = default.labels["pattern"] == world.PATTERNS.index("solid")
    assert changed[~solid].all()
    # A drawing holds its subject alone; a cut-out may hold a patterned neighbour's edge.
    assert not changed[solid].any() if source == "drawings" else changed[solid].mean() < 0.5


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    config = micro_config()
    workdir = tmp_path_factory.mktemp("encoder")
    result = fit_image_encoder(config, workdir, references.WorldReferences(config))
    return config, workdir, result


def test_the_fit_learns_held_out_looks_from_their_parts(fitted):
    _, _, result = fitted
    drawings, cut_outs = result.accuracy["drawings"], result.accuracy["cut_outs"]
    # Chance: colour 1/8, class 1/6, pattern 1/4; every held-out look is new to its class.
    assert drawings["colour"] >= 0.6 and cut_outs["colour"] >= 0.6
    assert drawings["pattern"] >= 0.6 and drawings["class"] >= 0.3
    assert 0.0 <= drawings[ALL_RIGHT] <= min(drawings["colour"], drawings["pattern"])


def test_the_export_is_a_transformers_clip_vision_model(fitted):
    _, workdir, result = fitted
    ours = load_image_encoder(result.export_dir)
    theirs = TorchCLIPVision.from_pretrained(result.export_dir).eval()
    pixels = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    cls, patches = ours(pixels)
    with torch.no_grad():
        out = theirs(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(np.asarray(cls), out.image_embeds.numpy(), atol=2e-5)
    np.testing.assert_allclose(np.asarray(patches), out.last_hidden_state[:, 1:].numpy(), atol=2e-5)


def test_a_finished_fit_is_reused_and_a_corrupt_one_refitted(fitted):
    config, workdir, result = fitted
    again = fit_image_encoder(config, workdir, references.WorldReferences(config))
    assert again.reused and again.accuracy == result.accuracy
    weights = result.export_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    refitted = fit_image_encoder(config, workdir, references.WorldReferences(config))
    assert not refitted.reused
    load_image_encoder(refitted.export_dir)  # whole again


def test_the_trainer_takes_the_fitted_encoder_only_at_the_configured_sizes(fitted):
    config, _, result = fitted
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    expected = CLIPVisionConfig(**config.model.image_encoder)
    encoder = load_fitted_image_encoder(str(result.export_dir), expected, mesh)
    assert all(x.sharding.mesh == mesh for x in jax.tree.leaves(nnx.state(encoder)))
    wider = toy_world.get_config().model.image_encoder
    with pytest.raises(ValueError, match="model.image_encoder describes"):
        load_fitted_image_encoder(str(result.export_dir), CLIPVisionConfig(**wider), mesh)
