"""What every sampler offers, the step math samplers share, and a denoising loop for `jax.jit`.

A sampler is a `Sampler` of pure functions over a `Schedule` and a sampler state (a pytree of
fixed-shape arrays, including `state.timesteps`, the model timestep of each step). `step` takes
the step index as a possibly traced integer, so the whole loop compiles once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.schedulers.schedule import Schedule, SchedulerConfig

State = Any
StepFn = Callable[..., tuple[jax.Array, State]]
ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def unscaled_model_input(
    schedule: Schedule, state: State, sample: jax.Array, step_index: jax.Array
) -> jax.Array:
    """The model sees the sample as is (every sampler but Euler)."""
    del schedule, state, step_index
    return sample


def unit_noise_sigma(schedule: Schedule, state: State) -> jax.Array:
    """The initial noise has unit variance (every sampler but Euler)."""
    del schedule, state
    return jnp.ones((), jnp.float32)


class Sampler(NamedTuple):
    """A sampler as pure functions.

    timesteps(schedule, num_inference_steps) -> np.ndarray: model timesteps, one per step.
    init_state(schedule, num_inference_steps, sample) -> state (only `sample.shape` is read).
    step(schedule, state, model_output, step_index, sample, key=None) -> (prev_sample, state).
    scale_model_input(schedule, state, sample, step_index) -> model input.
    init_noise_sigma(schedule, state) -> scale of the initial Gaussian noise.
    """

    name: str
    timesteps: Callable[[Schedule, int], np.ndarray]
    init_state: Callable[[Schedule, int, Any], State]
    step: StepFn
    scale_model_input: Callable[[Schedule, State, jax.Array, jax.Array], jax.Array] = (
        unscaled_model_input
    )
    init_noise_sigma: Callable[[Schedule, State], jax.Array] = unit_noise_sigma


def resolve_spacing(config: SchedulerConfig, default: str) -> str:
    """The configured timestep spacing, or the sampler's `default` when the config leaves it open."""
    return config.timestep_spacing or default


def as_float32(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def predict_x0_and_epsilon(
    config: SchedulerConfig, model_output: jax.Array, sample: jax.Array, alpha_prod_t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(x0, epsilon) implied by a model output at noise level `alpha_prod_t`; x0 clipped per config."""
    beta_prod_t = 1 - alpha_prod_t
    if config.prediction_type == "epsilon":
        x0 = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        epsilon = model_output
    else:
        x0 = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        epsilon = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
    if config.clip_sample:
        x0 = jnp.clip(x0, -config.clip_sample_range, config.clip_sample_range)
    return x0, epsilon


def gaussian_noise(key: jax.Array | None, like: jax.Array, sampler: str) -> jax.Array:
    """Standard normal float32 noise shaped like `like`; stochastic samplers need a key."""
    if key is None:
        raise ValueError(f"sampler {sampler!r} adds noise at each step and needs a PRNG key")
    return jax.random.normal(key, like.shape, jnp.float32)


def sample_loop(
    sampler: Sampler,
    schedule: Schedule,
    state: State,
    model_fn: ModelFn,
    noise: jax.Array,
    key: jax.Array | None = None,
) -> jax.Array:
    """Denoise from `noise` (unit Gaussian) through every step in one `lax.fori_loop`.

    model_fn(model_input, timestep, step_index) -> model output. Step i draws its noise (if any)
    from `fold_in(key, i)`. Returns the final sample.
    """

    def body(i: jax.Array, carry: tuple[jax.Array, State]) -> tuple[jax.Array, State]:
        sample, state = carry
        model_input = sampler.scale_model_input(schedule, state, sample, i)
        model_output = model_fn(model_input, state.timesteps[i], i)
        step_key = None if key is None else jax.random.fold_in(key, i)
        return sampler.step(schedule, state, model_output, i, sample, step_key)

    sample = (noise * sampler.init_noise_sigma(schedule, state)).astype(noise.dtype)
    sample, _ = jax.lax.fori_loop(0, state.timesteps.shape[0], body, (sample, state))
    return sample
