"""Schedules and samplers against diffusers' PyTorch schedulers built from Stable Diffusion's config.

Tolerances: betas, alphas_cumprod and timesteps must be exactly equal; sigma tables and the initial
noise scale agree within two float32 ulps (rtol 2**-22: PyTorch's vectorized float32 sqrt is not
always correctly rounded).
Every intermediate sample of a full sampling loop must agree within 1e-5 absolute, relative to
the sample's scale (max(1, max|x|); only Euler's sigma-space samples exceed 1, up to ~60).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers import scheduling_ddpm

from sdjax.schedulers import (
    SAMPLERS,
    SchedulerConfig,
    add_noise,
    from_diffusers_config,
    get_sampler,
    make_schedule,
    sample_loop,
    sample_timesteps,
    training_target,
    velocity,
)

# Stable Diffusion 2.1-base `scheduler/scheduler_config.json`.
SD_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.10.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
V_CONFIG = {**SD_CONFIG, "prediction_type": "v_prediction"}
REFERENCE = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "pndm": PNDMScheduler,
}
SHAPE = (2, 8, 8, 4)
TOLERANCE = 1e-5
ULPS = 2.0**-22  # two float32 ulps, relative
PHASE = np.random.default_rng(0).uniform(0, 2 * np.pi, SHAPE)


def reference(name: str, config: dict, num_steps: int):
    scheduler = REFERENCE[name].from_config(config)
    scheduler.set_timesteps(num_steps)
    return scheduler


def fake_model(model_input: np.ndarray, t: float) -> np.ndarray:
    """A deterministic stand-in for the UNet, in float64 NumPy so both sides get identical outputs."""
    x = np.asarray(model_input, np.float64)
    return (0.9 * np.tanh(x) + 0.1 * np.cos(t / 100.0 + PHASE)).astype(np.float32)


def jax_fake_model(model_input: jax.Array, t: jax.Array, step_index: jax.Array) -> jax.Array:
    del step_index
    return 0.9 * jnp.tanh(model_input) + 0.1 * jnp.cos(t / 100.0 + jnp.asarray(PHASE, jnp.float32))


def step_noise(key: jax.Array, i: int) -> np.ndarray:
    """The noise sdjax's stochastic steps draw at step i."""
    return np.array(jax.random.normal(jax.random.fold_in(key, i), SHAPE, jnp.float32))


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(np.asarray(ours, np.float64) - ref).max())
    assert err <= TOLERANCE * scale, f"{what}: max abs diff {err:.3g} (scale {scale:.3g})"


def reference_loop(name, config, num_steps, noise, key, monkeypatch, eta):
    scheduler = reference(name, config, num_steps)
    noises = iter(step_noise(key, i) for i in range(len(scheduler.timesteps)))
    monkeypatch.setattr(
        scheduling_ddpm, "randn_tensor", lambda *args, **kwargs: torch.from_numpy(next(noises))
    )
    x = torch.from_numpy(noise) * scheduler.init_noise_sigma
    samples = []
    for i, t in enumerate(scheduler.timesteps):
        model_output = fake_model(scheduler.scale_model_input(x, t).numpy(), float(t))
        extra = {"eta": eta, "variance_noise": torch.from_numpy(step_noise(key, i))} if eta else {}
        x = scheduler.step(torch.from_numpy(model_output), t, x, **extra).prev_sample
        samples.append(x.numpy())
    return samples


def our_loop(sampler, schedule, num_steps, noise, key):
    state = sampler.init_state(schedule, num_steps, noise)
    step, scale = jax.jit(sampler.step), jax.jit(sampler.scale_model_input)
    x = jnp.asarray(noise) * sampler.init_noise_sigma(schedule, state)
    samples = []
    for i in range(state.timesteps.shape[0]):
        t = float(state.timesteps[i])
        model_output = jnp.asarray(fake_model(np.asarray(scale(schedule, state, x, i)), t))
        x, state = step(schedule, state, model_output, i, x, jax.random.fold_in(key, i))
        samples.append(np.asarray(x))
    return samples


LOOP_CASES = [
    (name, config, 10, {}) for name in sorted(SAMPLERS) for config in (SD_CONFIG, V_CONFIG)
] + [
    ("ddim", SD_CONFIG, 10, {"eta": 0.5}),
    ("ddim", V_CONFIG, 12, {"eta": 1.0}),
    ("ddim", {**SD_CONFIG, "timestep_spacing": "trailing"}, 10, {}),
    ("dpmpp_2m", SD_CONFIG, 25, {}),
    ("dpmpp_2m", {**V_CONFIG, "timestep_spacing": "leading"}, 20, {}),
    ("euler", {**SD_CONFIG, "timestep_spacing": "leading"}, 10, {}),
    ("pndm", SD_CONFIG, 25, {}),
]


@pytest.mark.parametrize(
    "name,config,num_steps,options",
    LOOP_CASES,
    ids=[
        f"{n}-{c['prediction_type']}-{c.get('timestep_spacing', 'default')}-{k}-{o}"
        for n, c, k, o in LOOP_CASES
    ],
)
def test_sampling_loop_matches_diffusers(name, config, num_steps, options, monkeypatch):
    noise = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    key = jax.random.key(2)
    ref = reference_loop(name, config, num_steps, noise, key, monkeypatch, options.get("eta", 0))
    ours = our_loop(
        get_sampler(name, **options),
        make_schedule(from_diffusers_config(config)),
        num_steps,
        noise,
        key,
    )
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert_close(a, b, f"{name} step {i}")


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_tables_equal_diffusers(beta_schedule):
    config = {**SD_CONFIG, "beta_schedule": beta_schedule}
    schedule = make_schedule(from_diffusers_config(config))
    ref = DDPMScheduler.from_config(config)
    np.testing.assert_array_equal(np.asarray(schedule.betas), ref.betas.numpy())
    np.testing.assert_array_equal(np.asarray(schedule.alphas_cumprod), ref.alphas_cumprod.numpy())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("spacing", [None, "leading", "trailing", "linspace"])
def test_timesteps_equal_diffusers(name, spacing):
    config = SD_CONFIG if spacing is None else {**SD_CONFIG, "timestep_spacing": spacing}
    schedule = make_schedule(from_diffusers_config(config))
    sampler = get_sampler(name)
    for num_steps in (1, 7, 10, 50, 999):
        ref = reference(name, config, num_steps)
        timesteps = sampler.timesteps(schedule, num_steps)
        np.testing.assert_array_equal(timesteps, ref.timesteps.numpy(), err_msg=f"n={num_steps}")
        state = sampler.init_state(schedule, num_steps, jax.ShapeDtypeStruct(SHAPE, jnp.float32))
        np.testing.assert_array_equal(np.asarray(state.timesteps), timesteps)
        if hasattr(state, "sigmas"):
            np.testing.assert_allclose(state.sigmas, ref.sigmas.numpy(), rtol=ULPS, atol=0)
        init_sigma = sampler.init_noise_sigma(schedule, state)
        np.testing.assert_allclose(init_sigma, np.float32(ref.init_noise_sigma), rtol=ULPS)


def test_training_helpers_equal_diffusers():
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((6, 4, 4, 4)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0, 1, 250, 500, 998, 999])
    ref = DDPMScheduler.from_config(SD_CONFIG)
    schedule = make_schedule(from_diffusers_config(SD_CONFIG))
    expected = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t))
    assert_close(add_noise(schedule, x0, noise, jnp.asarray(t)), expected.numpy(), "add_noise")
    expected_v = ref.get_velocity(
        torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
    )
    assert_close(velocity(schedule, x0, noise, jnp.asarray(t)), expected_v.numpy(), "velocity")
    np.testing.assert_array_equal(training_target(schedule, x0, noise, t), noise)
    v_schedule = make_schedule(from_diffusers_config(V_CONFIG))
    assert_close(training_target(v_schedule, x0, noise, t), expected_v.numpy(), "v target")

    drawn = sample_timesteps(schedule, jax.random.key(0), 4096)
    assert drawn.shape == (4096,) and drawn.dtype == jnp.int32
    assert int(drawn.min()) == 0 and int(drawn.max()) == 999


@functools.partial(jax.jit, static_argnums=0)
def jitted_loop(sampler, schedule, state, noise, key):
    return sample_loop(sampler, schedule, state, jax_fake_model, noise, key)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_jitted_fori_loop_equals_python_loop_and_compiles_once(name):
    sampler = get_sampler(name, **({"eta": 0.7} if name == "ddim" else {}))
    schedule = make_schedule(from_diffusers_config(SD_CONFIG))
    state = sampler.init_state(schedule, 8, jax.ShapeDtypeStruct(SHAPE, jnp.float32))
    noise = jax.random.normal(jax.random.key(4), SHAPE)
    key = jax.random.key(5)

    step, scale = jax.jit(sampler.step), jax.jit(sampler.scale_model_input)
    x, python_state = noise * sampler.init_noise_sigma(schedule, state), state
    for i in range(state.timesteps.shape[0]):
        model_output = jax_fake_model(scale(schedule, python_state, x, i), state.timesteps[i], i)
        x, python_state = step(
            schedule, python_state, model_output, i, x, jax.random.fold_in(key, i)
        )

    cache_before = jitted_loop._cache_size()
    assert_close(jitted_loop(sampler, schedule, state, noise, key), np.asarray(x), "fori_loop")
    other = jitted_loop(sampler, schedule, state, noise * 0.5 + 1.0, jax.random.key(6))
    assert np.isfinite(np.asarray(other)).all()
    assert jitted_loop._cache_size() == cache_before + 1


def test_from_diffusers_config_reads_and_rejects():
    config = from_diffusers_config(SD_CONFIG)
    assert config == SchedulerConfig()
    assert from_diffusers_config(V_CONFIG).prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        from_diffusers_config({**SD_CONFIG, "use_karras_sigmas": True})
    with pytest.raises(ValueError, match="not_an_option"):
        from_diffusers_config({**SD_CONFIG, "not_an_option": 1})
    with pytest.raises(ValueError, match="sigmoid"):
        from_diffusers_config({**SD_CONFIG, "beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        get_sampler("ddim").timesteps(make_schedule(config), 0)
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("heun")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        sampler = get_sampler("ddpm")
        schedule = make_schedule(config)
        state = sampler.init_state(schedule, 4, jnp.zeros(SHAPE))
        sampler.step(schedule, state, jnp.zeros(SHAPE), 0, jnp.zeros(SHAPE))
