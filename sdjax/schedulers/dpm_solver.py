"""DPM-Solver++ 2M (Lu et al. 2022): second-order multistep solver in data (x0) prediction.

Settings of diffusers' `DPMSolverMultistepScheduler` defaults: midpoint rule, first-order first
step (no history yet) and first-order last step down to sigma = 0 (`final_sigmas_type="zero"`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.schedulers.sampling import Sampler, as_float32, resolve_spacing
from sdjax.schedulers.schedule import Schedule, check_num_steps, spaced_timesteps, step_sigmas

DEFAULT_SPACING = "linspace"


class DPMSolverState(NamedTuple):
    timesteps: jax.Array  # (n,) int32
    sigmas: jax.Array  # (n + 1,) float32, ending at 0
    prev_x0: jax.Array  # x0 prediction of the previous step (float32)
    count: jax.Array  # () int32: steps taken


def dpm_solver_timesteps(schedule: Schedule, num_inference_steps: int) -> np.ndarray:
    """n timesteps of an (n + 1)-point grid without its final point (trailing: an n-point grid)."""
    config = schedule.config
    check_num_steps(config, num_inference_steps)
    spacing = resolve_spacing(config, DEFAULT_SPACING)
    if spacing == "trailing":
        return spaced_timesteps(config, num_inference_steps, spacing).astype(np.int32)
    return spaced_timesteps(config, num_inference_steps + 1, spacing)[:-1].astype(np.int32)


def dpm_solver_init_state(
    schedule: Schedule, num_inference_steps: int, sample: object
) -> DPMSolverState:
    timesteps = dpm_solver_timesteps(schedule, num_inference_steps)
    return DPMSolverState(
        timesteps=jnp.asarray(timesteps),
        sigmas=jnp.asarray(step_sigmas(schedule, timesteps)),
        prev_x0=jnp.zeros(tuple(sample.shape), jnp.float32),
        count=jnp.zeros((), jnp.int32),
    )


def _alpha_sigma_lambda(sigma: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Variance-preserving (alpha_t, sigma_t) of a sigma-space noise level, and lambda = log(a/s)."""
    alpha_t = 1 / (sigma**2 + 1) ** 0.5
    sigma_t = sigma * alpha_t
    return alpha_t, sigma_t, jnp.log(alpha_t) - jnp.log(sigma_t)


def dpm_solver_step(
    schedule: Schedule,
    state: DPMSolverState,
    model_output: jax.Array,
    step_index: jax.Array,
    sample: jax.Array,
    key: jax.Array | None = None,
) -> tuple[jax.Array, DPMSolverState]:
    """One DPM-Solver++ step: first order at the first and last steps, second order between."""
    del key
    x, model_output = as_float32(sample, model_output)
    alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(state.sigmas[step_index + 1])
    alpha_s0, sigma_s0, lambda_s0 = _alpha_sigma_lambda(state.sigmas[step_index])
    _, _, lambda_s1 = _alpha_sigma_lambda(state.sigmas[jnp.maximum(step_index - 1, 0)])

    if schedule.config.prediction_type == "epsilon":
        x0 = (x - sigma_s0 * model_output) / alpha_s0
    else:
        x0 = alpha_s0 * x - sigma_s0 * model_output

    h = lambda_t - lambda_s0
    decay = alpha_t * (jnp.exp(-h) - 1.0)
    first_order = (sigma_t / sigma_s0) * x - decay * x0
    r0 = (lambda_s0 - lambda_s1) / h
    correction = (1.0 / r0) * (x0 - state.prev_x0)
    second_order = first_order - 0.5 * decay * correction

    last = step_index == state.timesteps.shape[0] - 1
    use_second = (state.count >= 1) & ~last
    prev = jnp.where(use_second, second_order, first_order)
    return prev.astype(sample.dtype), state._replace(prev_x0=x0, count=state.count + 1)


def dpm_solver_sampler() -> Sampler:
    """DPM-Solver++ 2M (as diffusers' `DPMSolverMultistepScheduler` with its defaults)."""
    return Sampler("dpmpp_2m", dpm_solver_timesteps, dpm_solver_init_state, dpm_solver_step)
