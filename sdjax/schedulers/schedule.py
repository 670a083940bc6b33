"""The DDPM noise schedule: config, betas, cumulative alphas, and the timestep grids of samplers.

The tables are built in float32 exactly as the reference PyTorch implementation builds them (the
schedule Stable Diffusion was trained with), so sdjax and diffusers see bit-identical
`alphas_cumprod`. They are computed once on the host in NumPy (`schedule_tables`, cached per config)
and carried on device as a `Schedule` pytree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# squaredcos_cap_v2 (improved DDPM): alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2)^2, betas capped.
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """Noise schedule settings, named as in a diffusers `scheduler_config.json`.

    Defaults are Stable Diffusion's. `timestep_spacing=None` means each sampler's own default
    (as diffusers does when the key is absent): leading for DDIM, DDPM and PNDM; linspace for
    Euler and DPM-Solver++.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    timestep_spacing: str | None = None
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    def __post_init__(self):
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        if self.timestep_spacing is not None:
            _check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {choices}")


# diffusers options that sdjax implements with one value only: key -> accepted values.
_FIXED_OPTIONS: dict[str, tuple[Any, ...]] = {
    "trained_betas": (None,),
    "skip_prk_steps": (True,),
    "thresholding": (False,),
    "rescale_betas_zero_snr": (False,),
    "variance_type": ("fixed_small", None),
    "solver_order": (2,),
    "algorithm_type": ("dpmsolver++",),
    "solver_type": ("midpoint",),
    "lower_order_final": (True,),
    "euler_at_final": (False,),
    "use_karras_sigmas": (False,),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,),
    "use_dynamic_shifting": (False,),
    "final_sigmas_type": ("zero",),
    "lambda_min_clipped": (-math.inf,),
    "interpolation_type": ("linear",),
    "timestep_type": ("discrete",),
}
# Bookkeeping keys, and parameters of features that the fixed options above leave switched off.
_INERT_OPTIONS = frozenset(
    {
        "_class_name",
        "_diffusers_version",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "sigma_min",
        "sigma_max",
        "flow_shift",
        "time_shift_type",
    }
)


def from_diffusers_config(config: Mapping[str, Any]) -> SchedulerConfig:
    """A `SchedulerConfig` from a diffusers scheduler config dict (e.g. SD's `scheduler_config.json`).

    Missing keys take `SchedulerConfig` defaults. Options that would change the math in a way
    sdjax does not implement raise `ValueError`, as do unknown keys.
    """
    own = {f.name for f in dataclasses.fields(SchedulerConfig)}
    for key, value in config.items():
        if key in own or key in _INERT_OPTIONS:
            continue
        if key not in _FIXED_OPTIONS:
            raise ValueError(f"unknown scheduler option {key!r}={value!r}")
        if value not in _FIXED_OPTIONS[key]:
            raise ValueError(
                f"scheduler option {key}={value!r} is not supported; sdjax implements "
                f"{' or '.join(repr(v) for v in _FIXED_OPTIONS[key])}"
            )
    return SchedulerConfig(**{key: config[key] for key in own if key in config})


def _linspace_float32(start: float, end: float, num: int) -> np.ndarray:
    """float32 linspace computed as PyTorch does: a float32 step, fused multiply-add from each end."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(num - 1))
    index = np.arange(num)
    from_start = np.float64(start32) + step * index
    from_end = np.float64(end32) - step * (num - 1 - index)
    return np.where(index < num // 2, from_start, from_end).astype(np.float32)


def _cosine_betas(num: int) -> np.ndarray:
    def alpha_bar(t: np.ndarray) -> np.ndarray:
        return np.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    t = np.arange(num, dtype=np.float64) / num
    betas = 1 - alpha_bar(t + 1 / num) / alpha_bar(t)
    return np.minimum(betas, COSINE_MAX_BETA).astype(np.float32)


def _betas(config: SchedulerConfig) -> np.ndarray:
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return _linspace_float32(config.beta_start, config.beta_end, n)
    if config.beta_schedule == "scaled_linear":
        return _linspace_float32(config.beta_start**0.5, config.beta_end**0.5, n) ** 2
    return _cosine_betas(n)


@functools.cache
def schedule_tables(config: SchedulerConfig) -> tuple[np.ndarray, np.ndarray]:
    """(betas, alphas_cumprod) as float32 NumPy arrays; the product accumulates in float64."""
    betas = _betas(config)
    alphas_cumprod = np.cumprod((np.float32(1) - betas).astype(np.float64)).astype(np.float32)
    for table in (betas, alphas_cumprod):
        table.setflags(write=False)
    return betas, alphas_cumprod


@struct.dataclass
class Schedule:
    """The schedule on device: float32 tables indexed by training timestep, plus its static config."""

    config: SchedulerConfig = struct.field(pytree_node=False)
    betas: jax.Array
    alphas_cumprod: jax.Array


def make_schedule(config: SchedulerConfig | None = None) -> Schedule:
    """The `Schedule` of `config` (Stable Diffusion's when None)."""
    config = config or SchedulerConfig()
    betas, alphas_cumprod = schedule_tables(config)
    return Schedule(
        config=config, betas=jnp.asarray(betas), alphas_cumprod=jnp.asarray(alphas_cumprod)
    )


def check_num_steps(config: SchedulerConfig, num_inference_steps: int) -> None:
    if not 1 <= num_inference_steps <= config.num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} must be in [1, {config.num_train_timesteps}]"
        )


def spaced_timesteps(config: SchedulerConfig, num: int, spacing: str) -> np.ndarray:
    """`num` training timesteps, descending, spread over [0, T) by `spacing` (int64)."""
    total = config.num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, total - 1, num).round()[::-1].astype(np.int64)
    if spacing == "leading":
        ratio = total // num
        return (np.arange(num) * ratio)[::-1].astype(np.int64) + config.steps_offset
    return np.round(np.arange(total, 0, -total / num)).astype(np.int64) - 1


def training_sigmas(schedule: Schedule) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for every training timestep (float32)."""
    _, alphas_cumprod = schedule_tables(schedule.config)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** np.float32(0.5)


def step_sigmas(schedule: Schedule, timesteps: np.ndarray) -> np.ndarray:
    """Sigmas at (possibly fractional) `timesteps`, linearly interpolated, then a final 0."""
    table = training_sigmas(schedule)
    sigmas = np.interp(timesteps, np.arange(len(table)), table)
    return np.append(sigmas, 0.0).astype(np.float32)


def alpha_prod_or(schedule: Schedule, t: jax.Array, fallback: jax.Array | float) -> jax.Array:
    """`alphas_cumprod[t]`, or `fallback` where `t` is negative (past the last denoising step)."""
    value = schedule.alphas_cumprod[jnp.maximum(t, 0)]
    return jnp.where(t >= 0, value, jnp.asarray(fallback, value.dtype))


def final_alpha_cumprod(schedule: Schedule) -> jax.Array:
    """Alpha product after the last step: 1, or `alphas_cumprod[0]` (config `set_alpha_to_one`)."""
    if schedule.config.set_alpha_to_one:
        return jnp.ones((), schedule.alphas_cumprod.dtype)
    return schedule.alphas_cumprod[0]
