"""Training losses of Subject-Diffusion (SPEC §1 "Attention-map control loss" and "Objective")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp


def diffusion_loss(
    prediction: jax.Array,
    target: jax.Array,
    weight: jax.Array | None = None,
    sample_weight: jax.Array | None = None,
) -> jax.Array:
    """Mean squared error; with `weight` (broadcastable, e.g. a subject-region mask) a weighted
    mean; `sample_weight` (B,) scales each example's error (e.g. min-SNR weights) in the sum."""
    err = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    if sample_weight is not None:
        err = err * sample_weight.astype(jnp.float32).reshape((-1,) + (1,) * (err.ndim - 1))
    if weight is None:
        return jnp.mean(err)
    weight = jnp.broadcast_to(weight.astype(jnp.float32), err.shape)
    return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def balanced_l1(attention: jax.Array, mask: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Mean attention outside the mask minus mean attention inside it, per (B, K) map.

    attention, mask: (B, h, w, K). Returns (B, K).
    """
    inside = mask.astype(jnp.float32)
    outside = 1.0 - inside
    a = attention.astype(jnp.float32)
    out_mean = jnp.sum(a * outside, axis=(1, 2)) / (jnp.sum(outside, axis=(1, 2)) + eps)
    in_mean = jnp.sum(a * inside, axis=(1, 2)) / (jnp.sum(inside, axis=(1, 2)) + eps)
    return out_mean - in_mean


def l1(attention: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean |A − M| per (B, K) map (the paper's form)."""
    return jnp.mean(jnp.abs(attention.astype(jnp.float32) - mask.astype(jnp.float32)), axis=(1, 2))


def contrastive(attention: jax.Array, mask: jax.Array, others: jax.Array, eps: float = 1e-5):
    """`balanced_l1` plus the mean attention inside the other subjects' masks (`others`, 0 where
    the sample has no other subject): a token attending to another subject pays for it directly,
    not diluted by the whole background. Beyond SPEC. (B, h, w, K) each; returns (B, K)."""
    o = others.astype(jnp.float32)
    in_others = jnp.sum(attention.astype(jnp.float32) * o, axis=(1, 2)) / (
        jnp.sum(o, axis=(1, 2)) + eps
    )
    return balanced_l1(attention, mask, eps) + in_others


def other_subjects(masks: jax.Array, token_valid: jax.Array) -> jax.Array:
    """Per token, the union (max) of the valid tokens' masks, times 1 − its own. (B, h, w, K)."""
    valid = token_valid.astype(masks.dtype)[:, None, None, :]
    union = jnp.max(masks * valid, axis=-1, keepdims=True)
    return union * (1.0 - masks)


# Each form as f(attention, mask, token_valid) → (B, K); only the contrastive one reads the other
# tokens (through `token_valid`).
ATTENTION_LOSSES: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "balanced_l1": lambda attention, mask, valid: balanced_l1(attention, mask),
    "l1": lambda attention, mask, valid: l1(attention, mask),
    "contrastive": lambda attention, mask, valid: contrastive(
        attention, mask, other_subjects(mask, valid)
    ),
}
# How the (B, K) token losses become one number: "per_token" averages over every supervised
# (sample, token) pair; "per_sample" (the reference code) averages over each sample's supervised
# tokens, then over the whole batch, where a sample without any (text dropped) counts as 0.
ATTENTION_NORMALISATIONS = ("per_token", "per_sample")
COUNT_EPS = 1e-5  # the reference code's guard on a sample's token count


def attention_loss(
    maps: Sequence[jax.Array],
    masks: Mapping[int, jax.Array],
    token_valid: jax.Array,
    kind: str = "balanced_l1",
    normalisation: str = "per_token",
) -> jax.Array:
    """Attention-map control loss averaged over layers and supervised tokens.

    maps: head-averaged cross-attention probabilities, each (B, h, w, K) at K supervised tokens
      (each subject's placeholder and entity word).
    masks: {h: (B, h, h, K)} target mask of the subject each token belongs to, per map size.
    token_valid: (B, K) whether the token is supervised (subject present, text not dropped).
    normalisation: one of `ATTENTION_NORMALISATIONS`.
    """
    if kind not in ATTENTION_LOSSES:
        raise ValueError(f"unknown attention loss {kind!r}; known: {sorted(ATTENTION_LOSSES)}")
    if normalisation not in ATTENTION_NORMALISATIONS:
        raise ValueError(
            f"unknown attention normalisation {normalisation!r}; known: {ATTENTION_NORMALISATIONS}"
        )
    if not maps:
        raise ValueError("attention_loss needs at least one attention map")
    per_layer = []
    for attention in maps:
        size = attention.shape[1]
        if size not in masks:
            raise ValueError(f"no target masks of size {size}; have sizes {sorted(masks)}")
        per_layer.append(ATTENTION_LOSSES[kind](attention, masks[size], token_valid))
    per_token = jnp.mean(jnp.stack(per_layer), axis=0)  # (B, K)
    weight = token_valid.astype(jnp.float32)
    if normalisation == "per_sample":
        per_sample = jnp.sum(per_token * weight, axis=1) / (jnp.sum(weight, axis=1) + COUNT_EPS)
        return jnp.mean(per_sample)
    return jnp.sum(per_token * weight) / jnp.maximum(jnp.sum(weight), 1.0)
