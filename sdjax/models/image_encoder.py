"""CLIP vision tower with projection, mirroring transformers' `CLIPVisionModelWithProjection`.

Returns the two features Subject-Diffusion uses (SPEC §1): the projected CLS embedding
`visual_projection(post_layernorm(h[:, 0]))` and the patch tokens `h[:, 1:]`, where `h` is the last
block's output (before `post_layernorm`). The blocks stay addressable as
`vision_model.encoder.layers[i]` so training code can unfreeze the last few.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.clip import CLIPEncoder, CLIPEncoderConfig
from sdjax.models.init import EAGER_SHARDING, LECUN_NORMAL, InitSpec, initializer
from sdjax.models.layers import CONV_AXES, DType, LayerNorm, embedding, linear


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPVisionConfig(CLIPEncoderConfig):
    """Vision tower sizes; defaults are transformers' CLIPVisionConfig (ViT-B/32)."""

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    projection_dim: int = 512

    def __post_init__(self):
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf(
        cls, config: dict[str, Any], *, dtype: DType = jnp.float32, remat: bool = False
    ) -> Self:
        """Reads a `CLIPVisionModelWithProjection` config, or a `CLIPModel` one (its vision tower)."""
        if "vision_config" not in config:
            return super().from_hf(config, dtype=dtype, remat=remat)
        vision = dict(config["vision_config"])
        if "projection_dim" in config:
            vision["projection_dim"] = config["projection_dim"]
        return super().from_hf(vision, dtype=dtype, remat=remat)


class CLIPVisionEmbeddings(nnx.Module):
    """Class token + non-overlapping patch convolution (no bias) + learned positions."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d, p = config.hidden_size, config.patch_size
        self.image_size = config.image_size
        class_init = InitSpec("normal", stddev=d**-0.5)
        self.class_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (d,), jnp.float32) * class_init.stddev,
            out_sharding=("embed",),
            init=class_init,
            eager_sharding=EAGER_SHARDING,
        )
        self.patch_embedding = nnx.Conv(
            config.num_channels,
            d,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            dtype=config.dtype,
            param_dtype=jnp.float32,
            kernel_init=initializer(LECUN_NORMAL, CONV_AXES),
            rngs=rngs,
        )
        self.position_embedding = embedding(
            config.num_patches + 1, d, rngs=rngs, dtype=config.dtype
        )

    def __call__(self, pixels: jax.Array) -> jax.Array:
        size = self.image_size
        if pixels.shape[1:3] != (size, size):
            raise ValueError(f"expected {size}x{size} NHWC images, got shape {pixels.shape}")
        patches = self.patch_embedding(pixels)
        patches = patches.reshape(patches.shape[0], -1, patches.shape[-1])
        cls = jnp.broadcast_to(
            self.class_embedding[...].astype(patches.dtype),
            (patches.shape[0], 1, patches.shape[-1]),
        )
        x = jnp.concatenate([cls, patches], axis=1)
        return x + self.position_embedding(jnp.arange(x.shape[1]))


class CLIPVisionTransformer(nnx.Module):
    """Embeddings → pre-LN → encoder; returns the last block's output (B, 1 + patches, D)."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = CLIPVisionEmbeddings(config, rngs=rngs)
        self.pre_layernorm = LayerNorm(d, eps, rngs=rngs)
        self.encoder = CLIPEncoder(config, rngs=rngs)
        self.post_layernorm = LayerNorm(d, eps, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        return self.encoder(self.pre_layernorm(self.embeddings(pixels)))


class CLIPVisionModelWithProjection(nnx.Module):
    """The image encoder: `(cls_embeds (B, projection_dim), patch_tokens (B, patches, hidden))`."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.vision_model = CLIPVisionTransformer(config, rngs=rngs)
        self.visual_projection = linear(
            config.hidden_size,
            config.projection_dim,
            rngs=rngs,
            dtype=config.dtype,
            use_bias=False,
        )

    def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pixels: (B, H, W, C) at `image_size`, normalised with CLIP's mean and std."""
        hidden = self.vision_model(pixels)
        cls = self.visual_projection(self.vision_model.post_layernorm(hidden[:, 0]))
        return cls, hidden[:, 1:]
