"""Diffusion and attention-map losses against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sdjax import losses, schedulers


def test_diffusion_loss_plain_and_weighted():
    pred = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    target = jnp.zeros((2, 2))
    assert float(losses.diffusion_loss(pred, target)) == pytest.approx(7.5)
    weight = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    assert float(losses.diffusion_loss(pred, target, weight)) == pytest.approx(8.5)


def test_diffusion_loss_scales_each_example_by_its_sample_weight():
    pred = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    target = jnp.zeros((2, 2))
    scale = jnp.array([0.5, 2.0])
    # (0.5 * (1 + 4) + 2 * (9 + 16)) / 4 elements
    assert float(losses.diffusion_loss(pred, target, None, scale)) == pytest.approx(13.125)
    weight = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    # (0.5 * 1 + 2 * 16) / 2 weighted elements
    assert float(losses.diffusion_loss(pred, target, weight, scale)) == pytest.approx(16.25)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_diffusers_snr(prediction_type):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    reference = DDPMScheduler(**config, prediction_type=prediction_type)
    schedule = schedulers.make_schedule(
        schedulers.SchedulerConfig(**config, prediction_type=prediction_type)
    )
    t = np.array([0, 10, 200, 500, 999])
    snr = compute_snr(reference, torch.from_numpy(t)).numpy()
    gamma = 5.0
    expected = np.minimum(snr, gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    got = schedulers.min_snr_weights(schedule, jnp.asarray(t), gamma)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def test_balanced_l1_matches_definition():
    attention = np.zeros((1, 2, 2, 1), np.float32)
    attention[0, 0, 0, 0] = 0.6
    attention[0, 1, 1, 0] = 0.2
    mask = np.zeros_like(attention)
    mask[0, 0, :, 0] = 1.0  # top row inside
    out = losses.balanced_l1(jnp.asarray(attention), jnp.asarray(mask))
    assert float(out[0, 0]) == pytest.approx(0.2 / 2 - 0.6 / 2, abs=1e-5)


def test_l1_matches_definition():
    attention = jnp.full((1, 2, 2, 1), 0.25)
    mask = jnp.asarray(np.array([1, 0, 0, 0], np.float32).reshape(1, 2, 2, 1))
    assert float(losses.l1(attention, mask)[0, 0]) == pytest.approx((0.75 + 3 * 0.25) / 4)


def test_attention_loss_averages_layers_and_valid_tokens():
    rng = np.random.default_rng(0)
    maps = [jnp.asarray(rng.random((2, s, s, 2)), jnp.float32) for s in (4, 2, 4)]
    masks = {s: jnp.asarray(rng.random((2, s, s, 2)) > 0.5, jnp.float32) for s in (4, 2)}
    valid = jnp.array([[True, False], [True, True]])
    got = float(losses.attention_loss(maps, masks, valid, "l1"))
    per = np.mean([np.asarray(losses.l1(m, masks[m.shape[1]])) for m in maps], axis=0)
    assert got == pytest.approx((per[0, 0] + per[1, 0] + per[1, 1]) / 3, rel=1e-5)
    assert float(losses.attention_loss(maps, masks, jnp.zeros((2, 2), bool))) == 0.0


def test_attention_loss_per_sample_normalisation_counts_a_text_dropped_sample_as_zero():
    """The reference code: mean over each sample's supervised tokens, then over the batch."""
    values = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]], np.float32)  # (B, K) l1 values
    maps = [jnp.asarray(np.broadcast_to(values[:, None, None, :], (3, 2, 2, 4)))]
    masks = {2: jnp.zeros((3, 2, 2, 4))}
    valid = jnp.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], bool)  # sample 2: text dropped
    per_sample = float(losses.attention_loss(maps, masks, valid, "l1", "per_sample"))
    assert per_sample == pytest.approx((2.5 + 6.0 + 0.0) / 3, rel=1e-5)
    per_token = float(losses.attention_loss(maps, masks, valid, "l1", "per_token"))
    assert per_token == pytest.approx((1 + 2 + 3 + 4 + 5 + 7) / 6, rel=1e-6)
    with pytest.raises(ValueError, match="per_batch"):
        losses.attention_loss(maps, masks, valid, "l1", "per_batch")


def test_attention_loss_errors_name_the_problem():
    maps = [jnp.zeros((1, 8, 8, 1))]
    with pytest.raises(ValueError, match="size 8"):
        losses.attention_loss(maps, {4: jnp.zeros((1, 4, 4, 1))}, jnp.ones((1, 1), bool))
    with pytest.raises(ValueError, match="unknown attention loss"):
        losses.attention_loss(maps, {8: jnp.zeros((1, 8, 8, 1))}, jnp.ones((1, 1), bool), "l2")


def test_contrastive_attention_loss_costs_the_other_subjects_region():
    """Two subjects on a 1 x 4 map: token 0 (subject A, cell 0) and token 1 (subject B, cell 3).
    By hand: balanced_l1 = mean outside − mean inside; plus the mean inside the other's mask."""
    masks = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])[None, None]  # (1,1,4,2)
    attention = jnp.array([[0.6, 0.1], [0.1, 0.1], [0.1, 0.2], [0.2, 0.6]])[None, None]
    valid = jnp.array([[True, True]])
    others = losses.other_subjects(masks, valid)
    np.testing.assert_array_equal(np.asarray(others)[0, 0], [[0, 1], [0, 0], [0, 0], [1, 0]])
    got = np.asarray(losses.contrastive(attention, masks, others))[0]
    want_a = (0.1 + 0.1 + 0.2) / 3 - 0.6 + 0.2
    want_b = (0.1 + 0.1 + 0.2) / 3 - 0.6 + 0.1
    np.testing.assert_allclose(got, [want_a, want_b], atol=1e-5)
    alone = losses.other_subjects(masks, jnp.array([[True, False]]))
    np.testing.assert_allclose(  # no other valid subject: balanced_l1 alone
        np.asarray(losses.contrastive(attention, masks, alone))[0, 0],
        np.asarray(losses.balanced_l1(attention, masks))[0, 0],
        atol=1e-6,
    )
    whole = losses.attention_loss([attention], {1: masks}, valid, "contrastive")
    assert float(whole) == pytest.approx((want_a + want_b) / 2, abs=1e-5)
