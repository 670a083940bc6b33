"""Diffusion timestep embeddings: the sinusoidal code and the MLP on top of it (diffusers names)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.layers import DType, activation, linear


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool,
    freq_shift: float,
    max_period: float = 10000.0,
) -> jax.Array:
    """Sinusoidal code of timesteps (N,) → (N, dim) float32, as in DDPM / diffusers.

    Frequencies are `max_period ** (-k / (dim/2 - freq_shift))`, k < dim/2; the code is
    [sin, cos] ([cos, sin] with `flip_sin_to_cos`), zero-padded when `dim` is odd.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class TimestepEmbedding(nnx.Module):
    """`linear_1` → activation → `linear_2`: the timestep code to the resnets' embedding."""

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        act_fn: str = "silu",
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.act = activation(act_fn)
        self.linear_1 = linear(in_features, features, dtype=dtype, rngs=rngs)
        self.linear_2 = linear(features, features, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(self.act(self.linear_1(x)))
