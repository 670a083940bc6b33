"""DDPM training: the forward process q(x_t | x0), timestep sampling and the regression target."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sdjax.schedulers.schedule import Schedule


def _noise_levels(schedule: Schedule, t: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) per example, shaped to broadcast over a batch."""
    alpha_prod = schedule.alphas_cumprod[t].reshape(t.shape + (1,) * (ndim - t.ndim))
    return alpha_prod**0.5, (1 - alpha_prod) ** 0.5


def add_noise(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; `t` is (batch,) integer."""
    signal, noise_level = _noise_levels(schedule, t, x0.ndim)
    return (signal * x0.astype(jnp.float32) + noise_level * noise.astype(jnp.float32)).astype(
        x0.dtype
    )


def velocity(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)."""
    signal, noise_level = _noise_levels(schedule, t, x0.ndim)
    return (signal * noise.astype(jnp.float32) - noise_level * x0.astype(jnp.float32)).astype(
        x0.dtype
    )


def training_target(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """What the model regresses: the noise (epsilon) or the velocity (v_prediction)."""
    if schedule.config.prediction_type == "epsilon":
        return noise
    return velocity(schedule, x0, noise, t)


def sample_timesteps(schedule: Schedule, key: jax.Array, batch: int) -> jax.Array:
    """Training timesteps, uniform over [0, num_train_timesteps), int32 of shape (batch,)."""
    return jax.random.randint(key, (batch,), 0, schedule.config.num_train_timesteps, jnp.int32)


def min_snr_weights(schedule: Schedule, t: jax.Array, gamma: float) -> jax.Array:
    """Min-SNR-gamma loss weights (Hang et al. 2023), (batch,) float32.

    SNR_t = alpha_bar_t / (1 - alpha_bar_t); the weight is min(SNR_t, gamma) / SNR_t for an
    epsilon target and min(SNR_t, gamma) / (SNR_t + 1) for a velocity target, as diffusers'
    training scripts compute it with `--snr_gamma`. Low-noise steps, whose epsilon error dominates
    the plain loss while saying little about the image, count less.
    """
    alpha_prod = schedule.alphas_cumprod[t]
    snr = alpha_prod / (1 - alpha_prod)
    clipped = jnp.minimum(snr, gamma)
    if schedule.config.prediction_type == "epsilon":
        return clipped / snr
    return clipped / (snr + 1)
