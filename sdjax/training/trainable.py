"""Which parameters train (SPEC §1 "trained?" column), as regexes over '/'-joined parameter paths."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

# SPEC §1: UNet `conv_in`, every cross-attention to_k/to_v, all adapter parameters, the grounding net,
# the CLS projector and the whole text encoder. Paths are those of `SubjectDiffusion`.
SUBJECT_DIFFUSION_TRAINABLE = (
    r"^unet/conv_in/",
    r"^unet/.*/attn2/to_[kv]/",
    r"^unet/.*/fuser/",
    r"^grounding/",
    r"^cls_projector/",
    r"^text_encoder/",
)
FULL_UNET = (r"^unet/",)
FULL_IMAGE_ENCODER = (r"^image_encoder/",)
# Parts whose layers cast their kernels and tables to the model's compute dtype before use (the
# VAE computes in float32 whatever the compute dtype).
COMPUTE_DTYPE_PARTS = ("unet", "text_encoder", "image_encoder")
IMAGE_ENCODER_TAIL = (
    r"^image_encoder/vision_model/encoder/layers/(?:{last})/",
    r"^image_encoder/vision_model/post_layernorm/",
    r"^image_encoder/visual_projection/",
)


def trainable_patterns(
    full_unet: bool = False,
    image_encoder_layers: int = 0,
    num_image_encoder_layers: int = 0,
    full_image_encoder: bool = False,
) -> tuple[str, ...]:
    """The reference trainable set, optionally with the whole UNet and the image encoder's tail
    (or the whole image encoder, for a world no pretrained encoder has seen)."""
    patterns = SUBJECT_DIFFUSION_TRAINABLE + (FULL_UNET if full_unet else ())
    if full_image_encoder:
        patterns += FULL_IMAGE_ENCODER
    elif image_encoder_layers:
        first = num_image_encoder_layers - image_encoder_layers
        last = "|".join(str(i) for i in range(first, num_image_encoder_layers))
        patterns += tuple(p.format(last=last) for p in IMAGE_ENCODER_TAIL)
    return patterns


def path_string(path: Sequence) -> str:
    return "/".join(str(p) for p in path)


def trainable_filter(patterns: Sequence[str]):
    """An NNX filter selecting the `nnx.Param`s whose path matches any pattern."""
    compiled = [re.compile(p) for p in patterns]

    def select(path, value) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        key = path_string(path) + "/"
        return any(p.search(key) for p in compiled)

    return select


def parameter_counts(params: nnx.State, frozen: nnx.State) -> dict[str, tuple[int, int]]:
    """Trained and frozen parameter counts per part (the first path element), in model order."""
    counts: dict[str, list[int]] = {}
    for column, state in enumerate((params, frozen)):
        for path, var in nnx.to_flat_state(state):
            if isinstance(var, nnx.Param):
                counts.setdefault(str(path[0]), [0, 0])[column] += math.prod(var.get_value().shape)
    return {part: (trained, fixed) for part, (trained, fixed) in counts.items()}


def parameter_overview(counts: dict[str, tuple[int, int]]) -> str:
    """One line per part: `  unet            trained    12.3M  frozen   853.2M`."""
    width = max(len(part) for part in counts)
    return "\n".join(
        f"  {part:<{width}}  trained {trained / 1e6:9.2f}M  frozen {fixed / 1e6:9.2f}M"
        for part, (trained, fixed) in counts.items()
    )


def frozen_in_compute_dtype(frozen: nnx.State, dtype: Any) -> nnx.State:
    """`frozen` with the kernels and tables (rank ≥ 2) of `COMPUTE_DTYPE_PARTS` stored in the
    compute `dtype`.

    Their layers cast them to `dtype` at every use, so the step computes exactly the same, and a
    bfloat16 run keeps half the bytes of frozen weights (2.9 GB for SD 2 base with ViT-H/14).
    Norm parameters (rank 1, used in float32) and the VAE keep their dtype. Works on arrays and
    on `jax.ShapeDtypeStruct`s alike (shardings kept).
    """
    dtype = jax.numpy.dtype(dtype)

    def cast(path: Sequence, value: Any) -> Any:
        if value.ndim < 2 or value.dtype == dtype or str(path[0]) not in COMPUTE_DTYPE_PARTS:
            return value
        if isinstance(value, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(value.shape, dtype, sharding=value.sharding)
        return value.astype(dtype)

    # New variables: a split state shares its variables with the module it came from.
    flat = [
        (path, var.replace(cast(path, var.get_value()))) for path, var in nnx.to_flat_state(frozen)
    ]
    return nnx.from_flat_state(flat)
