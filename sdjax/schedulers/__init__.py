"""Noise schedules and samplers as pure functions over arrays.

`make_schedule` / `from_diffusers_config` build the schedule; `training` holds the DDPM training
helpers; `get_sampler(name, **options)` returns a `Sampler` of pure functions (see `sampling`).
"""

from __future__ import annotations

from collections.abc import Callable

from sdjax.schedulers.ddim import ddim_sampler
from sdjax.schedulers.ddpm import ddpm_sampler
from sdjax.schedulers.dpm_solver import dpm_solver_sampler
from sdjax.schedulers.euler import euler_sampler
from sdjax.schedulers.pndm import pndm_sampler
from sdjax.schedulers.sampling import Sampler, sample_loop
from sdjax.schedulers.schedule import (
    Schedule,
    SchedulerConfig,
    from_diffusers_config,
    make_schedule,
)
from sdjax.schedulers.training import (
    add_noise,
    min_snr_weights,
    sample_timesteps,
    training_target,
    velocity,
)

SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "ddim": ddim_sampler,
    "ddpm": ddpm_sampler,
    "dpmpp_2m": dpm_solver_sampler,
    "euler": euler_sampler,
    "pndm": pndm_sampler,
}


def get_sampler(name: str, **options) -> Sampler:
    """The sampler called `name` (one of `SAMPLERS`); `options` go to its factory (ddim: eta)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](**options)


__all__ = [
    "SAMPLERS",
    "Sampler",
    "Schedule",
    "SchedulerConfig",
    "add_noise",
    "from_diffusers_config",
    "get_sampler",
    "make_schedule",
    "sample_loop",
    "sample_timesteps",
    "training_target",
    "min_snr_weights",
    "velocity",
]
