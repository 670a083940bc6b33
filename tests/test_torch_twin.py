"""The PyTorch twin of the training step (benchmarks/torch_twin.py) against sdjax's step.

One micro model with every zero-initialised part opened (gates, null features, the mask channel
of `conv_in`) is exported in the diffusers layout; the twin loads that folder and runs one step on
the batch and random draws of sdjax's first step. Loss, both loss parts, gradient norm and the
size of the trainable set must agree.

Every sample supervises the same number of tokens (one subject each, text kept): there the
attention-loss normalisation of SPEC (per-sample mean over valid tokens, then batch mean) and a
mean over all valid tokens coincide, so the comparison holds whichever of the two sdjax uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from training_config import micro_config

from benchmarks import torch_twin
from benchmarks.train_step import synthetic_batch
from sdjax import schedulers, sharding, trainer
from sdjax.export import export_model

BATCH = 4
PERTURBATION = 0.05  # added to every parameter (normal draws): no part stays at its zero init
LOSS_TOL = 1e-4
GRAD_NORM_RTOL = 1e-3
ATTENTION_RTOL = 1e-3
PLACEHOLDERS = (6, 11)  # token positions of the two `sks` slots; entities two tokens earlier


def open_every_part(model: nnx.Module, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var.get_value()
        opened = np.asarray(value) + PERTURBATION * rng.standard_normal(value.shape, np.float32)
        var.set_value(jax.device_put(opened, value.sharding))


def twin_batch(data) -> dict[str, np.ndarray]:
    """Synthetic batch: one subject per sample (slots alternate), one sample without its mask."""
    batch = synthetic_batch(data, BATCH)
    placeholders = np.tile(np.array(PLACEHOLDERS, np.int32), (BATCH, 1))
    batch["placeholder_positions"] = placeholders
    batch["entity_positions"] = placeholders - 2
    batch["subject_valid"] = np.array([[True, False], [False, True]] * (BATCH // 2))
    batch["drop_mask"] = np.arange(BATCH) == 0
    return batch


def first_step_draws(state, config, latent_shape) -> torch_twin.Draws:
    """The random numbers of sdjax's step 0: its key split as `subject_diffusion_loss` splits it
    (latent sample, noise, timesteps), NHWC draws moved to NCHW."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_latent, k_noise, k_time = jax.random.split(key, 3)
    schedule = schedulers.make_schedule(schedulers.SchedulerConfig(**config.scheduler.to_dict()))

    def nchw(k):
        return torch.from_numpy(np.array(jax.random.normal(k, latent_shape, jnp.float32)))

    return torch_twin.Draws(
        latent=nchw(k_latent).permute(0, 3, 1, 2),
        noise=nchw(k_noise).permute(0, 3, 1, 2),
        timesteps=torch.from_numpy(
            np.array(schedulers.sample_timesteps(schedule, k_time, BATCH))
        ).long(),
    )


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """(sdjax's first-step metrics and trainable size, the twin's)."""
    config = micro_config("", batch_size=BATCH)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    model = trainer.init_model(config, mesh)
    open_every_part(model)
    export = export_model(
        model, config, tmp_path_factory.mktemp("twin") / "export", fmt="diffusers"
    )

    run = trainer.build_run(config, mesh, model=model)
    batch = twin_batch(config.data)
    latent = config.data.resolution // config.data.latent_downsample
    draws = first_step_draws(run.state, config, (BATCH, latent, latent, 4))
    sdjax_size = sum(x.size for x in jax.tree.leaves(run.state.params))
    _, metrics = run.step_fn(
        run.state, run.frozen, trainer.global_batch(batch, sharding.batch_sharding(mesh))
    )
    sdjax_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}

    twin = torch_twin.SubjectDiffusionTwin(export, config)
    params = twin.set_trainable(config.train.full_unet)
    optimizer, schedule = torch_twin.make_optimizer(params, config)
    twin_metrics = torch_twin.train_step(
        twin, params, optimizer, schedule, torch_twin.torch_batch(batch), draws, config
    )
    twin_size = sum(p.numel() for p in params)
    return (sdjax_metrics, sdjax_size), (twin_metrics, twin_size)


def test_twin_loss_equals_sdjax(steps):
    (ours, _), (theirs, _) = steps
    assert ours["attention_loss"] != 0.0 and ours["diffusion_loss"] > 0.1
    for name in ("loss", "diffusion_loss", "attention_loss"):
        assert abs(ours[name] - theirs[name]) <= LOSS_TOL, (name, ours[name], theirs[name])
    # The attention loss of random masks is small: compare it relatively too.
    assert theirs["attention_loss"] == pytest.approx(ours["attention_loss"], rel=ATTENTION_RTOL)


def test_twin_gradient_and_trainable_set_equal_sdjax(steps):
    (ours, ours_size), (theirs, theirs_size) = steps
    assert ours_size == theirs_size
    assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=GRAD_NORM_RTOL)


def test_twin_refuses_options_it_does_not_implement(tmp_path):
    config = micro_config("")
    config.train.snr_gamma = 5.0
    with pytest.raises(ValueError, match=r"train.snr_gamma=5.0"):
        torch_twin.SubjectDiffusionTwin(tmp_path, config)
