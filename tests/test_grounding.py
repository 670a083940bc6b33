"""Grounding net: Fourier box code, null slots, use_bbox, output layout; patch tiles where the
reader places the subject image's patches."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sdjax  # noqa: F401
from sdjax import geometry
from sdjax.input_pipeline import augment
from sdjax.models.grounding import (
    GroundingConfig,
    GroundingNet,
    fourier_box_embedding,
    patch_tiles,
    token_boxes,
)

CFG = GroundingConfig(patch_dim=12, num_patch_tokens=4, hidden_dim=16, out_dim=8, max_subjects=2)


def test_fourier_embedding_matches_formula():
    box = np.array([0.1, 0.2, 0.7, 0.9], np.float32)
    out = np.asarray(fourier_box_embedding(jnp.asarray(box), 8, 100.0))
    assert out.shape == (64,)
    for k in range(8):
        f = 100.0 ** (k / 8)
        np.testing.assert_allclose(out[8 * k : 8 * k + 4], np.sin(f * box), atol=1e-5)
        np.testing.assert_allclose(out[8 * k + 4 : 8 * k + 8], np.cos(f * box), atol=1e-5)


@pytest.fixture(scope="module")
def net():
    return GroundingNet(CFG, rngs=nnx.Rngs(0))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    patches = jnp.asarray(np.repeat(rng.normal(size=(1, 2, 4, 12)), 2, axis=0), jnp.float32)
    boxes = jnp.asarray([[[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]] * 2, jnp.float32)
    return patches, boxes


def test_output_layout_and_slot_independence(net):
    patches, boxes = _inputs()
    valid = jnp.array([[True, True], [True, False]])
    out = net(patches, boxes, valid)
    assert out.shape == (2, 8, 8)
    # Slot 0 of both examples saw identical inputs; slot 1 differs only where it is empty.
    np.testing.assert_allclose(out[0, :4], out[1, :4], atol=1e-6)
    assert not np.allclose(out[0, 4:], out[1, 4:])


def test_empty_slot_ignores_its_inputs(net):
    patches, boxes = _inputs()
    valid = jnp.array([[True, False], [True, False]])
    a = net(patches, boxes, valid)
    b = net(patches.at[:, 1].set(99.0), boxes.at[:, 1].set(0.0), valid)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_use_bbox_false_drops_boxes_unless_all_slots_full():
    net = GroundingNet(GroundingConfig(**{**CFG.__dict__, "use_bbox": False}), rngs=nnx.Rngs(0))
    patches, boxes = _inputs()
    partial = jnp.array([[True, False], [True, False]])
    full = jnp.array([[True, True], [True, True]])
    moved = boxes.at[:, 0].add(0.1)
    np.testing.assert_allclose(
        net(patches, boxes, partial), net(patches, moved, partial), atol=1e-6
    )
    assert not np.allclose(net(patches, boxes, full), net(patches, moved, full))


def test_use_bbox_per_call_as_the_reference_code_with_three_slots():
    """`use_bbox=False` keeps the boxes once more than one subject is present (the reference
    code's `mask.sum(1) > 1`), given per call over a net whose config says True."""
    net = GroundingNet(GroundingConfig(**{**CFG.__dict__, "max_subjects": 3}), rngs=nnx.Rngs(0))
    patches = jnp.asarray(np.random.default_rng(1).normal(size=(1, 3, 4, 12)), jnp.float32)
    boxes = jnp.asarray([[[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8], [0.0, 0.0, 1.0, 1.0]]])
    moved = boxes.at[:, 0].add(0.1)
    one, two = jnp.array([[True, False, False]]), jnp.array([[True, True, False]])
    np.testing.assert_allclose(
        net(patches, boxes, one, use_bbox=False), net(patches, moved, one, use_bbox=False)
    )
    assert not np.allclose(net(patches, boxes, two, False), net(patches, moved, two, False))
    assert not np.allclose(net(patches, boxes, one), net(patches, moved, one))
    traced = nnx.jit(lambda n, flag: n(patches, boxes, one, flag))
    np.testing.assert_allclose(traced(net, jnp.bool_(False)), net(patches, boxes, one, False))


def test_wrong_slot_count_is_rejected(net):
    patches, boxes = _inputs()
    with pytest.raises(ValueError, match="2 slots of 4 tokens, got 3 slots"):
        net(jnp.concatenate([patches, patches[:, :1]], 1), boxes, jnp.ones((2, 3), bool))


def test_patch_tiles_are_where_the_reader_places_the_subject_images_patches():
    """Each tile is the image region the reader's white placement (`augment.placement_sampling`,
    TensorFlow) maps the corresponding patch of the subject canvas to."""
    resolution, size, grid = 64, 32, 4
    boxes = np.array([[0.1, 0.2, 0.5, 0.4], [0.3, 0.05, 0.45, 0.95], [0.0, 0.0, 1.0, 1.0]])
    tiles = np.asarray(patch_tiles(jnp.asarray(boxes, jnp.float32), grid))
    to_image = augment.placement_sampling(
        boxes.astype(np.float32), np.zeros((3, 2), np.float32), resolution, size, "white"
    )
    step = size / grid
    for row in range(grid):
        for col in range(grid):
            corners = np.array(
                [[col * step, row * step], [(col + 1) * step, (row + 1) * step]], np.float32
            )
            for b in range(3):
                placed = geometry.apply_homography(to_image[b], corners).numpy() / resolution
                np.testing.assert_allclose(
                    tiles[b, row * grid + col], placed.reshape(4), atol=1e-5, err_msg=f"{b}"
                )


def test_patch_boxes_give_each_token_its_tile():
    boxes = jnp.asarray([[[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]], jnp.float32)
    whole = np.asarray(token_boxes(boxes, CFG))
    assert whole.shape == (1, 2, 4, 4)
    np.testing.assert_array_equal(whole, np.broadcast_to(boxes[:, :, None], whole.shape))
    tiled = GroundingConfig(**{**CFG.__dict__, "patch_boxes": True})
    np.testing.assert_allclose(token_boxes(boxes, tiled), patch_tiles(boxes, 2), atol=0)
    patches, _ = _inputs()
    valid = jnp.array([[True, True]])
    out_whole = GroundingNet(CFG, rngs=nnx.Rngs(0))(patches[:1], boxes, valid)
    out_tiled = GroundingNet(tiled, rngs=nnx.Rngs(0))(patches[:1], boxes, valid)
    assert not np.allclose(out_whole, out_tiled)  # the tokens' positions differ
    with pytest.raises(ValueError, match="square grid of patch tokens, got 3"):
        GroundingConfig(num_patch_tokens=3, patch_boxes=True)
