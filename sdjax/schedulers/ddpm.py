"""DDPM ancestral sampling (Ho et al. 2020) with the "fixed small" posterior variance."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.schedulers.sampling import (
    Sampler,
    as_float32,
    gaussian_noise,
    predict_x0_and_epsilon,
    resolve_spacing,
)
from sdjax.schedulers.schedule import Schedule, alpha_prod_or, check_num_steps, spaced_timesteps

DEFAULT_SPACING = "leading"
MIN_VARIANCE = 1e-20


class DDPMState(NamedTuple):
    timesteps: jax.Array  # (n,) int32
    prev_timesteps: jax.Array  # (n,) int32: the next entry of `timesteps`, -1 after the last


def ddpm_timesteps(schedule: Schedule, num_inference_steps: int) -> np.ndarray:
    config = schedule.config
    check_num_steps(config, num_inference_steps)
    return spaced_timesteps(
        config, num_inference_steps, resolve_spacing(config, DEFAULT_SPACING)
    ).astype(np.int32)


def ddpm_init_state(schedule: Schedule, num_inference_steps: int, sample: object) -> DDPMState:
    del sample
    timesteps = ddpm_timesteps(schedule, num_inference_steps)
    prev = np.append(timesteps[1:], np.int32(-1))
    return DDPMState(jnp.asarray(timesteps), jnp.asarray(prev))


def ddpm_step(
    schedule: Schedule,
    state: DDPMState,
    model_output: jax.Array,
    step_index: jax.Array,
    sample: jax.Array,
    key: jax.Array | None = None,
) -> tuple[jax.Array, DDPMState]:
    """Sample x_{t_prev} ~ q(x_{t_prev} | x_t, x0_pred); no noise is added at t = 0."""
    x, model_output = as_float32(sample, model_output)
    t = state.timesteps[step_index]
    alpha_prod_t = schedule.alphas_cumprod[t]
    alpha_prod_prev = alpha_prod_or(schedule, state.prev_timesteps[step_index], 1.0)
    beta_prod_t, beta_prod_prev = 1 - alpha_prod_t, 1 - alpha_prod_prev
    alpha_t = alpha_prod_t / alpha_prod_prev
    beta_t = 1 - alpha_t
    x0, _ = predict_x0_and_epsilon(schedule.config, model_output, x, alpha_prod_t)
    mean = (alpha_prod_prev**0.5 * beta_t) / beta_prod_t * x0 + (
        alpha_t**0.5 * beta_prod_prev / beta_prod_t
    ) * x
    variance = jnp.maximum(beta_prod_prev / beta_prod_t * beta_t, MIN_VARIANCE)
    std = jnp.where(t > 0, variance**0.5, 0.0)
    prev = mean + std * gaussian_noise(key, x, "ddpm")
    return prev.astype(sample.dtype), state


def ddpm_sampler() -> Sampler:
    """DDPM ancestral sampling; needs a key per step."""
    return Sampler("ddpm", ddpm_timesteps, ddpm_init_state, ddpm_step)
