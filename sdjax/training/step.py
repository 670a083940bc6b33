"""The Subject-Diffusion training step (SPEC §1 "Objective", §2 classifier-free dropout).

A pure function of (train state, frozen parameters, batch): the functional `nnx.merge` pattern,
so `jax.jit` sees plain pytrees and Python stays off the hot path.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from ml_collections import ConfigDict

from sdjax import losses, schedulers
from sdjax.models.vae import DiagonalGaussian
from sdjax.schedulers import Schedule
from sdjax.training.optimizer import AdamW, AdamWState


@struct.dataclass
class TrainState:
    """Everything a checkpoint holds besides the data iterator."""

    step: jax.Array
    params: nnx.State
    opt_state: AdamWState
    ema: nnx.State
    rng: jax.Array
    skipped: jax.Array  # steps whose loss or gradient was not finite (their update was dropped)


def init_train_state(params: nnx.State, optimizer: AdamW, seed: int, use_ema: bool) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema=jax.tree.map(jnp.copy, params) if use_ema else nnx.State({}),
        rng=jax.random.key_data(jax.random.key(seed)),
        skipped=jnp.zeros((), jnp.int32),
    )


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The EMA decay of update `step` (0-based): `decay`, or with warm-up min(decay, (1+t)/(10+t))
    as diffusers' `EMAModel`, so the random start fades within the first steps."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    t = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def empty_prompt_ids(bos: int, eos: int, pad: int, length: int) -> jax.Array:
    """Token ids of the empty prompt (the dropped-text branch)."""
    return jnp.array([bos, eos] + [pad] * (length - 2), jnp.int32)


def supervised_token_targets(batch: dict, sizes: tuple[int, ...]) -> dict[int, jax.Array]:
    """Target masks (B, r, r, 2S) for each map size r: per subject, its `sks` token then its entity word."""
    targets = {}
    for r in sizes:
        masks = jnp.moveaxis(batch[f"subject_masks_{r}"], 1, -1)  # (B, r, r, S)
        targets[r] = jnp.concatenate([masks, masks], axis=-1)
    return targets


def diffusion_weight(batch: dict, config: ConfigDict) -> jax.Array | None:
    """Per-latent-cell weights of the diffusion loss (None: SPEC's plain mean).

    `masked_diffusion_loss`: inside the subjects only (everywhere where the mask was dropped);
    `subject_loss_weight` w != 1: the subjects' cells count w times a background cell.
    """
    inside = 1.0 - batch["location_mask"]  # the subjects' region, whether or not the UNet sees it
    if config.masked_diffusion_loss:
        return jnp.where(batch["drop_mask"][:, None, None, None], 1.0, inside)
    if config.subject_loss_weight == 1.0:
        return None
    return 1.0 + (config.subject_loss_weight - 1.0) * inside


def predict_with_maps(
    model,
    batch: dict,
    noisy: jax.Array,
    timesteps: jax.Array,
    *,
    input_ids: jax.Array,
    subjects: jax.Array,
    fused: jax.Array,
    location: jax.Array,
) -> tuple[jax.Array, list[jax.Array]]:
    """The UNet's prediction for noisy latents of a reader batch, and the cross-attention maps of
    the supervised tokens (each subject's `sks` token, then each entity word: (B, r, r, 2S) each).

    subjects (B, S): slots given to the grounding net; fused (B, S): slots whose CLS replaces their
    `sks` token; location: the location mask (B, h, w, 1) the UNet reads.
    """
    grounding_tokens, subject_embeds = model.encode_subjects(
        batch["subject_pixels"], batch["subject_boxes"], subjects
    )
    context = model.encode_prompt(input_ids, subject_embeds, batch["placeholder_positions"], fused)
    unet_input = jnp.concatenate([noisy, model.location_input(location).astype(noisy.dtype)], -1)
    positions = jnp.concatenate([batch["placeholder_positions"], batch["entity_positions"]], axis=1)
    return model.unet(
        unet_input,
        timesteps,
        context,
        grounding_tokens,
        attention_positions=positions,
        grounding_layout=model.grounding_layout(batch["subject_boxes"], subjects),
    )


def subject_diffusion_loss(
    model,
    batch: dict,
    key: jax.Array,
    schedule: Schedule,
    config: ConfigDict,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L = MSE(eps_hat, eps) + lambda_attn * L_attn on one batch (config: the `train` section)."""
    k_latent, k_noise, k_time = jax.random.split(key, 3)
    b = batch["image"].shape[0]

    if "latent_moments" in batch:  # cached by data/cache_latents.py: no VAE encode here
        posterior = DiagonalGaussian.from_moments(batch["latent_moments"])
    else:
        posterior = model.vae.encode(batch["image"])
    scaling = model.vae.config.scaling_factor  # the VAE's own (diffusers' `scaling_factor`)
    latents = jax.lax.stop_gradient(posterior.sample(k_latent) * scaling)

    keep_text = ~batch["drop_text"]
    subjects = batch["subject_valid"] & ~batch["drop_subjects"][:, None]
    empty = empty_prompt_ids(
        config.bos_id, config.eos_id, config.pad_id, batch["input_ids"].shape[1]
    )
    input_ids = jnp.where(keep_text[:, None], batch["input_ids"], empty)
    fused = subjects & keep_text[:, None]
    location = jnp.where(batch["drop_mask"][:, None, None, None], 0.0, batch["location_mask"])
    noise = jax.random.normal(k_noise, latents.shape, latents.dtype)
    timesteps = schedulers.sample_timesteps(schedule, k_time, b)
    noisy = schedulers.add_noise(schedule, latents, noise, timesteps)
    prediction, maps = predict_with_maps(
        model, batch, noisy, timesteps, input_ids=input_ids, subjects=subjects, fused=fused,
        location=location,
    )  # fmt: skip

    target = schedulers.training_target(schedule, latents, noise, timesteps)
    weight = diffusion_weight(batch, config)
    sample_weight = None
    if config.snr_gamma > 0:
        sample_weight = schedulers.min_snr_weights(schedule, timesteps, config.snr_gamma)
    diffusion = losses.diffusion_loss(prediction, target, weight, sample_weight)
    token_valid = jnp.tile(fused, (1, 2))
    sizes = tuple(sorted({m.shape[1] for m in maps}))
    attention = losses.attention_loss(
        maps,
        supervised_token_targets(batch, sizes),
        token_valid,
        config.attention_loss,
        config.attention_normalisation,
    )
    loss = diffusion + config.lambda_attn * attention
    return loss, {"diffusion_loss": diffusion, "attention_loss": attention}


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: AdamW,
    schedule: Schedule,
    config: ConfigDict,
) -> Callable[[TrainState, nnx.State, dict], tuple[TrainState, dict]]:
    """The step: gradients of the trainable parameters only; a non-finite loss or gradient drops
    the update and counts it in `skipped` (the host decides whether to stop)."""

    def train_step(state: TrainState, frozen: nnx.State, batch: dict):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, frozen)
            return subject_diffusion_loss(model, batch, key, schedule, config)

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = optimizer.update(grads, state.opt_state, state.params, finite)
        ema = state.ema
        if config.ema_decay > 0:
            decay = ema_decay_at(state.step, config.ema_decay, config.ema_warmup)
            decay = jnp.where(finite, decay, 1.0)  # a skipped step leaves it as is
            ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema=ema,
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, **parts}
        return new_state, metrics

    return train_step
