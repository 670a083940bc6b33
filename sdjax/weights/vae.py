"""Loading a diffusers `AutoencoderKL` checkpoint (safetensors) into `sdjax.models.vae`."""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from sdjax.models.init import Shardings
from sdjax.models.layers import DType
from sdjax.models.vae import AutoencoderKL, VAEConfig
from sdjax.weights.clip import model_folder
from sdjax.weights.core import load_module, read_config, read_safetensors_folder

RENAMES = ((r"\.to_out\.", ".to_out.0."),)
# Older diffusers files (e.g. the original SD releases) name the mid-block attention differently.
DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_DEPRECATED = re.compile(r"(attentions\.\d+)\.(query|key|value|proj_attn)\.")


def upgrade_attention_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames deprecated mid-block attention keys (`query`, ..., `proj_attn`) to current ones."""
    return {
        _DEPRECATED.sub(lambda m: f"{m[1]}.{DEPRECATED_ATTENTION[m[2]]}.", k): v
        for k, v in tensors.items()
    }


def load_vae(
    path: str | Path, *, dtype: DType = jnp.float32, shardings: Shardings | None = None
) -> AutoencoderKL:
    """The VAE from an SD pipeline root (its `vae/`) or a diffusers `AutoencoderKL` folder.

    Keep the default float32 for decoding: SD's VAE decoder overflows in 16-bit precision.
    `shardings`: where each parameter goes (`load_module`).
    """
    folder = model_folder(path, "vae")
    config = VAEConfig.from_diffusers(read_config(folder), dtype=dtype)
    tensors = upgrade_attention_names(read_safetensors_folder(folder))
    return load_module(
        lambda rngs: AutoencoderKL(config, rngs=rngs),
        tensors,
        renames=RENAMES,
        shardings=shardings,
    )
