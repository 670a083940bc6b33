"""Does each subject's text attend to its own subject? Cross-attention binding on training records.

Records with two or more subjects are noised to chosen timesteps and run through the model as in
training (nothing dropped). For every supervised token (a subject's `sks` token and its entity
word) the head-averaged cross-attention mass inside each subject's mask is summed; its *own share*
is the mass in its own subject's mask over the mass in all subjects' masks, per attention layer,
then averaged over layers. A model that told the subjects apart scores near 1; attention spread
evenly over the subjects' masks scores the *chance* share, the own mask's area over all masks'.
The attention loss supervises exactly these maps, so the own share shows whether looks and nouns
are bound to their boxes, where the location mask alone only says where some subject is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from sdjax import schedulers
from sdjax.input_pipeline import pipeline
from sdjax.training.step import predict_with_maps


def own_shares(
    attention: np.ndarray, masks: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(own share, chance share), each (B, 2S), of the supervised tokens; NaN where undefined (an
    empty slot, a sample with fewer than two subjects, no mass or area in the subjects' masks).

    attention (B, r, r, 2S): each slot's `sks` token, then each slot's entity word; masks
    (B, S, r, r) in [0, 1]; valid (B, S).
    """
    num_slots = masks.shape[1]
    owner = np.arange(2 * num_slots) % num_slots  # the slot of each supervised token
    present = valid.astype(np.float64)
    mass = np.einsum("bhwk,bshw->bks", attention, masks) * present[:, None, :]  # (B, 2S, S)
    area = masks.sum((2, 3)) * present  # (B, S)
    own = mass[:, np.arange(2 * num_slots), owner]
    total, all_area = mass.sum(-1), area.sum(-1, keepdims=True)
    defined = (valid.sum(1) >= 2)[:, None] & valid[:, owner] & (total > 0) & (all_area > 0)
    share = np.where(defined, own / np.where(defined, total, 1.0), np.nan)
    chance = np.where(defined, area[:, owner] / np.where(all_area > 0, all_area, 1.0), np.nan)
    return share, chance


def layer_mean_shares(maps: Sequence[np.ndarray], batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """`own_shares` of every layer's maps (the batch's masks at each map's size) averaged over
    the layers, token by token; the tokens defined in some layer, flattened."""
    shares, chances = zip(
        *(
            own_shares(
                np.asarray(m, np.float64),
                np.asarray(batch[f"subject_masks_{m.shape[1]}"], np.float64),
                np.asarray(batch["subject_valid"]),
            )
            for m in maps
        ),
        strict=True,
    )
    shares, chances = np.stack(shares), np.stack(chances)
    counts = np.sum(~np.isnan(shares), axis=0)
    defined = counts > 0
    return (
        np.nansum(shares, 0)[defined] / counts[defined],
        np.nansum(chances, 0)[defined] / counts[defined],
    )


def read_batches(model, data: ConfigDict, file_pattern: str | None, count: int) -> list[dict]:
    """`count` batches of the reader of `data` (its records, or `file_pattern`'s) as `model`
    takes them (its subject size, latent size and attention-map sizes), nothing dropped: every
    caption, location mask and subject as the model is meant to see them."""
    data = ConfigDict(data.to_dict())
    data.file_pattern = file_pattern or data.file_pattern
    data.subject_size = model.image_encoder.config.image_size
    data.latent_downsample = model.vae.downsample_factor
    latent = data.resolution // data.latent_downsample
    data.attention_map_sizes = tuple(latent // f for f in model.unet.config.attention_map_factors)
    for name in data.dropout:
        data.dropout[name] = 0.0
    data.num_epochs = None
    batches = pipeline.make_iterator(data)
    return [next(batches) for _ in range(count)]


@dataclasses.dataclass(frozen=True)
class BindingRow:
    """The mean own and chance shares of the supervised tokens at one timestep."""

    timestep: int
    own: float
    chance: float
    tokens: int


def measure_binding(
    model, config: ConfigDict, batches: Iterable[dict], timesteps: Sequence[int], seed: int = 0
) -> list[BindingRow]:
    """Own and chance shares per timestep over `batches` (reader batches of `config.data`),
    each noised with the same noise at every timestep; latents are the VAE posterior's mean,
    encoded once per batch."""
    limit = config.scheduler.num_train_timesteps
    outside = [t for t in timesteps if not 0 <= t < limit]
    if outside:
        raise ValueError(f"timesteps {outside} outside the training schedule's [0, {limit})")
    schedule = schedulers.make_schedule(schedulers.SchedulerConfig(**config.scheduler.to_dict()))
    scaling = model.vae.config.scaling_factor
    encode = jax.jit(lambda images: model.vae.encode(images).mean * scaling)

    @jax.jit
    def maps_at(
        batch: dict, latents: jax.Array, timestep: jax.Array, key: jax.Array
    ) -> list[jax.Array]:
        noise = jax.random.normal(key, latents.shape, latents.dtype)
        steps = jnp.full((latents.shape[0],), timestep, jnp.int32)
        noisy = schedulers.add_noise(schedule, latents, noise, steps)
        _, maps = predict_with_maps(
            model, batch, noisy, steps, input_ids=batch["input_ids"],
            subjects=batch["subject_valid"], fused=batch["subject_valid"],
            location=batch["location_mask"],
        )  # fmt: skip
        return maps

    batches = list(batches)
    latents = [encode(batch["image"]) for batch in batches]
    rows = []
    for timestep in timesteps:
        shares, chances = [], []
        for index, (batch, batch_latents) in enumerate(zip(batches, latents, strict=True)):
            key = jax.random.key(seed + index)
            maps = maps_at(batch, batch_latents, jnp.int32(timestep), key)
            share, chance = layer_mean_shares(maps, batch)
            shares.append(share)
            chances.append(chance)
        share, chance = np.concatenate(shares), np.concatenate(chances)
        if share.size == 0:
            raise ValueError(
                "no record with two or more subjects in the batches read: the binding of "
                "subjects to boxes needs multi-subject records"
            )
        rows.append(
            BindingRow(int(timestep), float(share.mean()), float(chance.mean()), share.size)
        )
    return rows


def binding_table(rows: Sequence[BindingRow]) -> str:
    """Markdown: one row per timestep."""
    lines = ["| timestep | own share | chance | tokens |", "|---|---|---|---|"]
    lines += [f"| {r.timestep} | {r.own:.2f} | {r.chance:.2f} | {r.tokens} |" for r in rows]
    return "\n".join(lines) + "\n"
