"""ViT image encoder mirroring transformers' `ViTModel` (DINO ViT-S/16 for the DINO metric).

The blocks are pre-LN transformer layers with the same math as CLIP's, so the encoder is
`sdjax.models.clip.CLIPEncoder`; `sdjax.weights.vit` maps transformers' names onto it
(`encoder.layer.N.attention.attention.query` → `encoder.layers.N.self_attn.q_proj`, ...).
Embeddings and the final LayerNorm keep transformers' names. The pooler is not built: the
features are `last_hidden_state` (after the final LayerNorm), whose first token is the CLS.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.clip import CLIPEncoder, CLIPEncoderConfig
from sdjax.models.init import ZEROS, initializer
from sdjax.models.layers import DType, LayerNorm, conv

CLS_AXES = (None, None, "embed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig(CLIPEncoderConfig):
    """Sizes of a transformers `ViTConfig`; defaults are transformers' (ViT-B/16)."""

    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if not self.qkv_bias:
            raise ValueError("qkv_bias=False ViTs are not supported (DINO and ViT use biases)")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf(
        cls, config: dict[str, Any], *, dtype: DType = jnp.float32, remat: bool = False
    ) -> Self:
        """Reads a transformers `ViTConfig` dict; absent keys take transformers' defaults."""
        return super().from_hf(config, dtype=dtype, remat=remat)


class ViTPatchEmbeddings(nnx.Module):
    """Non-overlapping patch convolution with bias: (B, H, W, C) → (B, patches, D)."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        p = config.patch_size
        self.projection = conv(
            config.num_channels,
            config.hidden_size,
            p,
            stride=p,
            padding=0,
            rngs=rngs,
            dtype=config.dtype,
        )

    def __call__(self, pixels: jax.Array) -> jax.Array:
        patches = self.projection(pixels)
        return patches.reshape(patches.shape[0], -1, patches.shape[-1])


class ViTEmbeddings(nnx.Module):
    """CLS token + patch convolution (with bias) + learned positions, as transformers' names."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.image_size = config.image_size
        self.cls_token = nnx.Param(
            initializer(ZEROS, CLS_AXES)(rngs.params(), (1, 1, d), jnp.float32)
        )
        self.position_embeddings = nnx.Param(
            initializer(ZEROS, CLS_AXES)(rngs.params(), (1, config.num_patches + 1, d), jnp.float32)
        )
        self.patch_embeddings = ViTPatchEmbeddings(config, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        size = self.image_size
        if pixels.shape[1:3] != (size, size):
            raise ValueError(f"expected {size}x{size} NHWC images, got shape {pixels.shape}")
        patches = self.patch_embeddings(pixels)
        cls = jnp.broadcast_to(
            self.cls_token[...].astype(patches.dtype), (patches.shape[0], 1, patches.shape[-1])
        )
        x = jnp.concatenate([cls, patches], axis=1)
        return x + self.position_embeddings[...].astype(x.dtype)


class ViTModel(nnx.Module):
    """Embeddings → encoder → final LayerNorm; returns `last_hidden_state` (B, 1 + patches, D)."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = ViTEmbeddings(config, rngs=rngs)
        self.encoder = CLIPEncoder(config, rngs=rngs)
        self.layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels: (B, H, W, C) at `image_size`, normalised with the model's mean and std."""
        return self.layernorm(self.encoder(self.embeddings(pixels)))

    def cls_features(self, pixels: jax.Array) -> jax.Array:
        """The CLS token of `last_hidden_state`: (B, hidden_size)."""
        return self(pixels)[:, 0]
