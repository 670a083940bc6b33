"""The binding measure of `sdjax.eval.binding`: own and chance shares re-derived token by token."""

import numpy as np

from sdjax.eval.binding import layer_mean_shares, own_shares

SLOTS = 3
R = 8


def _masks(rng, valid):
    masks = (rng.random((len(valid), SLOTS, R, R)) < 0.3).astype(np.float64)
    return masks * np.asarray(valid, np.float64)[:, :, None, None]


def _loop_shares(attention, masks, valid):
    """Token by token: mass in its own slot's mask over the mass in every present slot's."""
    share = np.full((len(valid), 2 * SLOTS), np.nan)
    chance = np.full_like(share, np.nan)
    for b, slots in enumerate(valid):
        present = [s for s in range(SLOTS) if slots[s]]
        if len(present) < 2:
            continue
        for k in range(2 * SLOTS):
            slot = k % SLOTS
            if not slots[slot]:
                continue
            mass = {s: float((attention[b, :, :, k] * masks[b, s]).sum()) for s in present}
            share[b, k] = mass[slot] / sum(mass.values())
            chance[b, k] = masks[b, slot].sum() / sum(masks[b, s].sum() for s in present)
    return share, chance


def test_own_shares_match_a_token_by_token_derivation():
    rng = np.random.default_rng(0)
    valid = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)
    masks = _masks(rng, valid)
    attention = rng.random((len(valid), R, R, 2 * SLOTS))
    share, chance = own_shares(attention, masks, valid)
    want_share, want_chance = _loop_shares(attention, masks, valid)
    np.testing.assert_allclose(share, want_share, rtol=1e-12)
    np.testing.assert_allclose(chance, want_chance, rtol=1e-12)
    assert np.isnan(share[2:]).all()  # one subject, or none: binding is undefined


def test_bound_swapped_and_uniform_attention():
    valid = np.array([[1, 1, 0]], bool)
    masks = np.zeros((1, SLOTS, R, R))
    masks[0, 0, :2, :2] = 1  # 4 cells
    masks[0, 1, 4:, 4:] = 1  # 16 cells
    own = masks[0, [0, 1, 2, 0, 1, 2]].transpose(1, 2, 0)[None]  # each token on its mask
    swapped = own[..., [1, 0, 2, 4, 3, 5]]
    uniform = np.ones_like(own)
    share, chance = own_shares(own, masks, valid)
    np.testing.assert_allclose(share[0, [0, 1, 3, 4]], 1.0)
    np.testing.assert_allclose(chance[0, [0, 1, 3, 4]], [0.2, 0.8, 0.2, 0.8])
    np.testing.assert_allclose(own_shares(swapped, masks, valid)[0][0, [0, 1, 3, 4]], 0.0)
    np.testing.assert_allclose(own_shares(uniform, masks, valid)[0], chance)


def test_layers_are_averaged_token_by_token():
    rng = np.random.default_rng(1)
    valid = np.array([[1, 1, 1], [1, 1, 0]], bool)
    big = _masks(rng, valid)
    small = big.reshape(2, SLOTS, R // 2, 2, R // 2, 2).mean((3, 5))
    batch = {"subject_valid": valid, f"subject_masks_{R}": big, f"subject_masks_{R // 2}": small}
    maps = [rng.random((2, R, R, 2 * SLOTS)), rng.random((2, R // 2, R // 2, 2 * SLOTS))]
    share, chance = layer_mean_shares(maps, batch)
    per_layer = [own_shares(m, batch[f"subject_masks_{m.shape[1]}"], valid) for m in maps]
    want = (per_layer[0][0] + per_layer[1][0]) / 2
    np.testing.assert_allclose(share, want[~np.isnan(want)])
    assert share.shape == (3 * 2 + 2 * 2,) and chance.shape == share.shape
