"""The similarity math of the metrics, pure JAX: cosines between embedding sets.

DINO and CLIP-I: each generated image against every real image of its subject, the cosines
averaged (`mean_cosine_to_set`); CLIP-T: each generated image against its prompt's text
(`paired_cosine`). Averaging over images, prompts and subjects is `sdjax.eval.scores`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-12  # guards the norm of an all-zero embedding


def normalise(x: jax.Array) -> jax.Array:
    """Rows of `x` (..., D) scaled to unit length, in float32."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), EPS)


def cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
    """(N, M) cosine similarity of every row of `a` (N, D) with every row of `b` (M, D)."""
    return normalise(a) @ normalise(b).T


def mean_cosine_to_set(generated: jax.Array, real: jax.Array) -> jax.Array:
    """(N,) mean cosine of each generated embedding with all M real embeddings."""
    return cosine_matrix(generated, real).mean(axis=1)


def paired_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """(N,) cosine of row n of `a` with row n of `b` (b may be one row, broadcast)."""
    return jnp.sum(normalise(a) * normalise(b), axis=-1)
