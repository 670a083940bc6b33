"""Which parameters train (SPEC §1 "trained?" column), as regexes over '/'-joined parameter paths."""

from __future__ import annotations

import re
from collections.abc import Sequence

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
IMAGE_ENCODER_TAIL = (
    r"^image_encoder/vision_model/encoder/layers/(?:{last})/",
    r"^image_encoder/vision_model/post_layernorm/",
    r"^image_encoder/visual_projection/",
)


def trainable_patterns(
    full_unet: bool = False, image_encoder_layers: int = 0, num_image_encoder_layers: int = 0
) -> tuple[str, ...]:
    """The reference trainable set, optionally with the whole UNet and the image encoder's tail."""
    patterns = SUBJECT_DIFFUSION_TRAINABLE + (FULL_UNET if full_unet else ())
    if image_encoder_layers:
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
