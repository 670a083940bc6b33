"""DDIM (Song et al. 2021): deterministic for eta = 0, DDPM-like noise for eta = 1."""

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
from sdjax.schedulers.schedule import (
    Schedule,
    alpha_prod_or,
    check_num_steps,
    final_alpha_cumprod,
    spaced_timesteps,
)

DEFAULT_SPACING = "leading"


class DDIMState(NamedTuple):
    timesteps: jax.Array  # (n,) int32
    prev_timesteps: jax.Array  # (n,) int32; negative means "after the last step"


def ddim_timesteps(schedule: Schedule, num_inference_steps: int) -> np.ndarray:
    config = schedule.config
    check_num_steps(config, num_inference_steps)
    return spaced_timesteps(
        config, num_inference_steps, resolve_spacing(config, DEFAULT_SPACING)
    ).astype(np.int32)


def ddim_init_state(schedule: Schedule, num_inference_steps: int, sample: object) -> DDIMState:
    del sample
    timesteps = ddim_timesteps(schedule, num_inference_steps)
    # The reference steps back by T // n whatever the spacing; sdjax does the same.
    stride = schedule.config.num_train_timesteps // num_inference_steps
    return DDIMState(jnp.asarray(timesteps), jnp.asarray(timesteps - stride))


def ddim_step(
    schedule: Schedule,
    state: DDIMState,
    model_output: jax.Array,
    step_index: jax.Array,
    sample: jax.Array,
    key: jax.Array | None = None,
    *,
    eta: float = 0.0,
) -> tuple[jax.Array, DDIMState]:
    """One DDIM step from `state.timesteps[step_index]` to the previous timestep."""
    x, model_output = as_float32(sample, model_output)
    alpha_prod_t = schedule.alphas_cumprod[state.timesteps[step_index]]
    alpha_prod_prev = alpha_prod_or(
        schedule, state.prev_timesteps[step_index], final_alpha_cumprod(schedule)
    )
    x0, epsilon = predict_x0_and_epsilon(schedule.config, model_output, x, alpha_prod_t)
    variance = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)
    std = eta * variance**0.5
    direction = (1 - alpha_prod_prev - std**2) ** 0.5 * epsilon
    prev = alpha_prod_prev**0.5 * x0 + direction
    if eta > 0:
        prev = prev + std * gaussian_noise(key, x, "ddim")
    return prev.astype(sample.dtype), state


def ddim_sampler(eta: float = 0.0) -> Sampler:
    """DDIM with noise weight `eta` (0: deterministic; > 0 needs a key per step)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")

    def step(schedule, state, model_output, step_index, sample, key=None):
        return ddim_step(schedule, state, model_output, step_index, sample, key, eta=eta)

    return Sampler("ddim", ddim_timesteps, ddim_init_state, step)
