"""Loading transformers `ViTModel` checkpoints (e.g. DINO ViT-S/16) into `sdjax.models.vit`."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from sdjax.models.layers import DType
from sdjax.models.vit import ViTConfig, ViTModel
from sdjax.weights.core import expect_model_type, load_module, read_config, read_safetensors_folder

MODEL_TYPES = ("vit",)
# A `ViTFor...` head model stores the backbone under `vit.`; its head and the pooler are unused.
BACKBONE_PREFIX = "vit."
UNUSED = (r"^pooler\.", r"^classifier\.", r"\.position_ids$")
# transformers' ViT block names ← the CLIP encoder's (sdjax.models.clip), as `torch_key` renames.
RENAMES = (
    (r"^encoder\.layers\.", "encoder.layer."),
    (r"\.self_attn\.q_proj\.", ".attention.attention.query."),
    (r"\.self_attn\.k_proj\.", ".attention.attention.key."),
    (r"\.self_attn\.v_proj\.", ".attention.attention.value."),
    (r"\.self_attn\.out_proj\.", ".attention.output.dense."),
    (r"\.layer_norm1\.", ".layernorm_before."),
    (r"\.layer_norm2\.", ".layernorm_after."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)


def load_vit(path: str | Path, *, dtype: DType = jnp.float32) -> ViTModel:
    """A `ViTModel` from a transformers folder (`ViTModel` or a `ViTFor...` model's backbone)."""
    folder = Path(path)
    raw_config = read_config(folder)
    expect_model_type(raw_config, folder, MODEL_TYPES)
    config = ViTConfig.from_hf(raw_config, dtype=dtype)
    tensors = read_safetensors_folder(folder)
    if any(k.startswith(BACKBONE_PREFIX) for k in tensors):
        tensors = {
            k.removeprefix(BACKBONE_PREFIX): v
            for k, v in tensors.items()
            if k.startswith(BACKBONE_PREFIX)
        }
    return load_module(
        lambda rngs: ViTModel(config, rngs=rngs), tensors, renames=RENAMES, ignore=UNUSED
    )
