"""PNDM with PLMS steps only (Liu et al. 2022; `skip_prk_steps=True`, Stable Diffusion's setting).

The first step is taken twice: once as an Euler-like step from x_T, then again from x_T with the
mean of the two model outputs (a second-order start). Later steps combine up to four model
outputs with linear multistep (Adams–Bashforth) weights. n inference steps use n + 1 model calls.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.schedulers.sampling import Sampler, as_float32, predict_x0_and_epsilon, resolve_spacing
from sdjax.schedulers.schedule import (
    Schedule,
    alpha_prod_or,
    check_num_steps,
    final_alpha_cumprod,
    spaced_timesteps,
)

DEFAULT_SPACING = "leading"
HISTORY = 3  # previous model outputs kept for the fourth-order rule
# Weights of (current, previous, second previous, third previous) output, by steps already taken.
PLMS_WEIGHTS = np.array(
    [
        [1, 0, 0, 0],
        [1 / 2, 1 / 2, 0, 0],
        [3 / 2, -1 / 2, 0, 0],
        [23 / 12, -16 / 12, 5 / 12, 0],
        [55 / 24, -59 / 24, 37 / 24, -9 / 24],
    ],
    np.float32,
)


class PNDMState(NamedTuple):
    timesteps: jax.Array  # (n + 1,) int32; the second entry repeats the first step's target
    stride: jax.Array  # () int32: T // n
    history: jax.Array  # (HISTORY, *sample.shape) float32, most recent first
    first_sample: jax.Array  # x_T, kept for the repeated first step
    count: jax.Array  # () int32: steps taken


def pndm_timesteps(schedule: Schedule, num_inference_steps: int) -> np.ndarray:
    config = schedule.config
    check_num_steps(config, num_inference_steps)
    spaced = spaced_timesteps(config, num_inference_steps, resolve_spacing(config, DEFAULT_SPACING))
    return np.insert(spaced, 1, spaced[1:2]).astype(np.int32)


def pndm_init_state(schedule: Schedule, num_inference_steps: int, sample: object) -> PNDMState:
    shape = tuple(sample.shape)
    return PNDMState(
        timesteps=jnp.asarray(pndm_timesteps(schedule, num_inference_steps)),
        stride=jnp.asarray(schedule.config.num_train_timesteps // num_inference_steps, jnp.int32),
        history=jnp.zeros((HISTORY, *shape), jnp.float32),
        first_sample=jnp.zeros(shape, jnp.float32),
        count=jnp.zeros((), jnp.int32),
    )


def _transfer(
    schedule: Schedule, x: jax.Array, epsilon: jax.Array, t: jax.Array, t_prev: jax.Array
) -> jax.Array:
    """The PNDM transfer x_t -> x_{t_prev} given a noise estimate (Liu et al. 2022, eq. 11)."""
    alpha_prod_t = schedule.alphas_cumprod[t]
    alpha_prod_prev = alpha_prod_or(schedule, t_prev, final_alpha_cumprod(schedule))
    beta_prod_t, beta_prod_prev = 1 - alpha_prod_t, 1 - alpha_prod_prev
    sample_coeff = (alpha_prod_prev / alpha_prod_t) ** 0.5
    denominator = (
        alpha_prod_t * beta_prod_prev**0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_prev) ** 0.5
    )
    return sample_coeff * x - (alpha_prod_prev - alpha_prod_t) * epsilon / denominator


def pndm_step(
    schedule: Schedule,
    state: PNDMState,
    model_output: jax.Array,
    step_index: jax.Array,
    sample: jax.Array,
    key: jax.Array | None = None,
) -> tuple[jax.Array, PNDMState]:
    """One PLMS step; the order of the rule grows with `state.count` up to four."""
    del key
    x, model_output = as_float32(sample, model_output)
    count = state.count
    repeat = count == 1
    t = state.timesteps[step_index]
    t_from = jnp.where(repeat, t + state.stride, t)
    t_to = jnp.where(repeat, t, t - state.stride)
    x_from = jnp.where(repeat, state.first_sample, x)

    weights = jnp.asarray(PLMS_WEIGHTS)[jnp.minimum(count, len(PLMS_WEIGHTS) - 1)]
    outputs = jnp.concatenate([model_output[None], state.history])
    combined = jnp.tensordot(weights, outputs, axes=1)
    _, epsilon = predict_x0_and_epsilon(
        schedule.config, combined, x_from, schedule.alphas_cumprod[t_from]
    )
    prev = _transfer(schedule, x_from, epsilon, t_from, t_to)

    history = jnp.where(repeat, state.history, outputs[:HISTORY])
    new_state = state._replace(
        history=history,
        first_sample=jnp.where(count == 0, x, state.first_sample),
        count=count + 1,
    )
    return prev.astype(sample.dtype), new_state


def pndm_sampler() -> Sampler:
    """PNDM (PLMS steps), the reference sampler of Stable Diffusion and Subject-Diffusion."""
    return Sampler("pndm", pndm_timesteps, pndm_init_state, pndm_step)
