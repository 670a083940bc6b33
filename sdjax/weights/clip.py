"""Loading transformers CLIP checkpoints (safetensors) into the sdjax text and image encoders."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from sdjax.models.image_encoder import CLIPVisionConfig, CLIPVisionModelWithProjection
from sdjax.models.init import Shardings
from sdjax.models.layers import DType
from sdjax.models.text_encoder import CLIPTextConfig, CLIPTextModel
from sdjax.models.text_projection import CLIPTextModelWithProjection
from sdjax.weights.core import (
    expect_model_type,
    load_module,
    read_config,
    read_safetensors_folder,
)

TEXT_PREFIX = "text_model."
TEXT_PROJECTION_PREFIXES = (TEXT_PREFIX, "text_projection.")
CLIP_MODEL_TYPES = ("clip", "clip_text_model")
DEFAULT_EOS_ID = 49407  # transformers' CLIPTextConfig default
DEFAULT_PROJECTION_DIM = 512
VISION_PREFIXES = ("vision_model.", "visual_projection.")
BUFFERS = (r"\.position_ids$",)
VISION_RENAMES = ((r"\.pre_layernorm\.", ".pre_layrnorm."),)


def model_folder(path: str | Path, subfolder: str) -> Path:
    """`path/subfolder` when `path` is a pipeline root holding it, else `path` itself."""
    path = Path(path)
    return path / subfolder if (path / subfolder / "config.json").exists() else path


def _with_text_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers >= 5 saves `CLIPTextModel` without the `text_model.` prefix that older files have."""
    if any(k.startswith(TEXT_PREFIX) for k in tensors):
        return tensors
    return {TEXT_PREFIX + k: v for k, v in tensors.items()}


def load_text_encoder(
    path: str | Path,
    *,
    dtype: DType = jnp.float32,
    remat: bool = False,
    shardings: Shardings | None = None,
) -> CLIPTextModel:
    """A `CLIPTextModel` from an SD pipeline root (its `text_encoder/`) or a transformers folder;
    `shardings`: where each parameter goes (`load_module`)."""
    folder = model_folder(path, "text_encoder")
    config = CLIPTextConfig.from_hf(read_config(folder), dtype=dtype, remat=remat)
    tensors = _with_text_prefix(read_safetensors_folder(folder))
    return load_module(
        lambda rngs: CLIPTextModel(config, rngs=rngs),
        tensors,
        ignore=BUFFERS,
        shardings=shardings,
    )


def load_image_encoder(
    path: str | Path,
    *,
    dtype: DType = jnp.float32,
    remat: bool = False,
    shardings: Shardings | None = None,
) -> CLIPVisionModelWithProjection:
    """The image encoder from a transformers `CLIPVisionModelWithProjection` or `CLIPModel` folder.

    `path` may also be a pipeline root holding `image_encoder/`. From a `CLIPModel` (both towers)
    only the vision tower and `visual_projection` are read. `shardings`: where each parameter
    goes (`load_module`).
    """
    folder = model_folder(path, "image_encoder")
    raw_config = read_config(folder)
    config = CLIPVisionConfig.from_hf(raw_config, dtype=dtype, remat=remat)
    tensors = read_safetensors_folder(folder)
    if "vision_config" in raw_config:
        tensors = {k: v for k, v in tensors.items() if k.startswith(VISION_PREFIXES)}
    return load_module(
        lambda rngs: CLIPVisionModelWithProjection(config, rngs=rngs),
        tensors,
        renames=VISION_RENAMES,
        ignore=BUFFERS,
        shardings=shardings,
    )


def load_text_projection(
    path: str | Path, *, dtype: DType = jnp.float32
) -> CLIPTextModelWithProjection:
    """The projected text tower of a transformers `CLIPModel` (or `CLIPTextModelWithProjection`)
    folder, for CLIP-T; any other model type is a `WeightLoadError` naming it."""
    folder = Path(path)
    raw_config = read_config(folder)
    expect_model_type(raw_config, folder, CLIP_MODEL_TYPES)
    text = dict(raw_config.get("text_config", raw_config))
    projection_dim = raw_config.get("projection_dim", DEFAULT_PROJECTION_DIM)
    eos_token_id = text.get("eos_token_id", DEFAULT_EOS_ID)
    config = CLIPTextConfig.from_hf(text, dtype=dtype)
    tensors = {
        k: v
        for k, v in read_safetensors_folder(folder).items()
        if k.startswith(TEXT_PROJECTION_PREFIXES)
    }
    return load_module(
        lambda rngs: CLIPTextModelWithProjection(config, projection_dim, eos_token_id, rngs=rngs),
        tensors,
        ignore=BUFFERS,
    )
