"""Euler steps of the probability-flow ODE in sigma space (Karras et al. 2022), no churn.

The sample lives at x = x0 + sigma * eps; the model sees x / sqrt(sigma^2 + 1)
(`scale_model_input`) and the initial noise is scaled by `init_noise_sigma`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.schedulers.sampling import Sampler, as_float32, resolve_spacing
from sdjax.schedulers.schedule import Schedule, check_num_steps, spaced_timesteps, step_sigmas

DEFAULT_SPACING = "linspace"


class EulerState(NamedTuple):
    timesteps: jax.Array  # (n,) float32 (fractional under linspace spacing)
    sigmas: jax.Array  # (n + 1,) float32, ending at 0


def euler_timesteps(schedule: Schedule, num_inference_steps: int) -> np.ndarray:
    config = schedule.config
    check_num_steps(config, num_inference_steps)
    spacing = resolve_spacing(config, DEFAULT_SPACING)
    if spacing == "linspace":
        grid = np.linspace(0, config.num_train_timesteps - 1, num_inference_steps, dtype=np.float32)
        return grid[::-1].copy()
    return spaced_timesteps(config, num_inference_steps, spacing).astype(np.float32)


def euler_init_state(schedule: Schedule, num_inference_steps: int, sample: object) -> EulerState:
    del sample
    timesteps = euler_timesteps(schedule, num_inference_steps)
    return EulerState(jnp.asarray(timesteps), jnp.asarray(step_sigmas(schedule, timesteps)))


def euler_init_noise_sigma(schedule: Schedule, state: EulerState) -> jax.Array:
    """The largest sigma (plus unit variance under leading spacing, as the reference does)."""
    sigma_max = jnp.max(state.sigmas)
    if resolve_spacing(schedule.config, DEFAULT_SPACING) in ("linspace", "trailing"):
        return sigma_max
    return (sigma_max**2 + 1) ** 0.5


def euler_scale_model_input(
    schedule: Schedule, state: EulerState, sample: jax.Array, step_index: jax.Array
) -> jax.Array:
    """x / sqrt(sigma^2 + 1): the variance-preserving input the model was trained on."""
    del schedule
    sigma = state.sigmas[step_index]
    return (sample.astype(jnp.float32) / (sigma**2 + 1) ** 0.5).astype(sample.dtype)


def euler_step(
    schedule: Schedule,
    state: EulerState,
    model_output: jax.Array,
    step_index: jax.Array,
    sample: jax.Array,
    key: jax.Array | None = None,
) -> tuple[jax.Array, EulerState]:
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * (x_i - x0_pred) / sigma_i."""
    del key
    x, model_output = as_float32(sample, model_output)
    sigma = state.sigmas[step_index]
    if schedule.config.prediction_type == "epsilon":
        x0 = x - sigma * model_output
    else:
        x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    derivative = (x - x0) / sigma
    prev = x + derivative * (state.sigmas[step_index + 1] - sigma)
    return prev.astype(sample.dtype), state


def euler_sampler() -> Sampler:
    """Euler (as diffusers' `EulerDiscreteScheduler` with its defaults)."""
    return Sampler(
        "euler",
        euler_timesteps,
        euler_init_state,
        euler_step,
        scale_model_input=euler_scale_model_input,
        init_noise_sigma=euler_init_noise_sigma,
    )
