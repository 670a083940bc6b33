"""The pretrained Stable Diffusion UNet and text encoder that the reference code runs outside the
interpolation window (its `unet_ori` and `text_encoder_ori`), with two-branch guidance."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.text_encoder import CLIPTextModel
from sdjax.models.unet import UNet
from sdjax.sampling.errors import SamplingInputError
from sdjax.weights.clip import load_text_encoder
from sdjax.weights.core import read_config
from sdjax.weights.unet import load_unet, unet_folder

# What the model does at steps outside the window: the fine-tuned model with the subjects off
# (adapter scale 0, plain prompt, zero mask), or the pretrained base model (the reference code).
OUTSIDE_WINDOW = ("fine_tuned", "base_model")


class BaseModel(nnx.Module):
    """A plain text-to-image UNet (no location channel, no adapters) and its text encoder."""

    def __init__(self, unet: UNet, text_encoder: CLIPTextModel):
        self.unet = unet
        self.text_encoder = text_encoder


def load_base_model(path: str | Path, dtype: str = "float32") -> BaseModel:
    """The UNet and text encoder of a diffusers Stable Diffusion folder, as released."""
    if not str(path) or not Path(path).is_dir():
        raise SamplingInputError(
            f"base model folder {str(path)!r} not found: the pretrained Stable Diffusion folder "
            "(the export's model.pretrained, or give base_model=PATH)"
        )
    stored = read_config(unet_folder(path))
    unet = load_unet(
        path,
        in_channels=stored["in_channels"],
        use_adapter=False,
        grounding_dim=0,
        attention_map_factors=(),  # no attention maps are read at sampling
        dtype=jnp.dtype(dtype),
    )
    return BaseModel(unet, load_text_encoder(path, dtype=jnp.dtype(dtype)))


def two_branch_epsilon(
    base: BaseModel,
    latents: jax.Array,
    timestep: jax.Array,
    prompt_context: jax.Array,
    negative_context: jax.Array,
    text_scale: jax.Array,
) -> jax.Array:
    """eps_u + s_T (eps_c - eps_u) of the base UNet, both branches as one batched call."""
    batch = latents.shape[0]
    sample = jnp.concatenate([latents, latents])
    context = jnp.concatenate([prompt_context, negative_context])
    eps = base.unet(sample, timestep, context)
    eps_c, eps_u = eps[:batch], eps[batch:]
    return eps_u + text_scale * (eps_c - eps_u)
