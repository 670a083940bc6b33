"""Grounding net: subject patch tokens + Fourier-embedded boxes → grounding tokens for the adapters."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models import layers


@dataclasses.dataclass(frozen=True)
class GroundingConfig:
    """Sizes of the grounding net (SPEC §1: 256 patch tokens of width 1280 → 1024-d tokens)."""

    patch_dim: int = 1280
    num_patch_tokens: int = 256
    fourier_freqs: int = 8
    fourier_base: float = 100.0
    hidden_dim: int = 1024
    out_dim: int = 1024
    max_subjects: int = 2
    use_bbox: bool = True
    box_embedding: bool = True  # False: every slot takes the null position feature (ablation)
    dtype: str = "float32"

    @property
    def fourier_dim(self) -> int:
        return self.fourier_freqs * 2 * 4


def fourier_box_embedding(boxes: jax.Array, num_freqs: int, base: float) -> jax.Array:
    """Boxes (..., 4) in [0, 1] → (..., num_freqs * 8): per frequency `base**(k/num_freqs)`,
    sin of the 4 coordinates then cos of the 4 coordinates."""
    freqs = base ** (jnp.arange(num_freqs, dtype=jnp.float32) / num_freqs)
    angles = freqs[:, None] * boxes[..., None, :].astype(jnp.float32)  # (..., F, 4)
    embed = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # (..., F, 8)
    return embed.reshape(*boxes.shape[:-1], num_freqs * 8)


class GroundingNet(nnx.Module):
    """Per subject: concat(patch tokens, Fourier(box)) → LayerNorm → Linear → GELU → Linear.

    Empty slots use learnable null patch and position features (zero-initialised). Output tokens of
    all slots are concatenated along the sequence: (B, max_subjects * num_patch_tokens, out_dim).
    """

    def __init__(self, config: GroundingConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        n, in_dim = config.num_patch_tokens, config.patch_dim + config.fourier_dim
        self.null_patch_feature = nnx.Param(jnp.zeros((1, n, config.patch_dim), jnp.float32))
        self.null_position_feature = nnx.Param(jnp.zeros((1, n, config.fourier_dim), jnp.float32))
        self.norm = layers.LayerNorm(in_dim, rngs=rngs)
        self.linear_1 = layers.linear(in_dim, config.hidden_dim, dtype=dtype, rngs=rngs)
        self.linear_2 = layers.linear(config.hidden_dim, config.out_dim, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        patch_tokens: jax.Array,
        boxes: jax.Array,
        valid: jax.Array,
        use_bbox: bool | jax.Array | None = None,
    ) -> jax.Array:
        """patch_tokens (B, S, N, patch_dim), boxes (B, S, 4) in [0, 1], valid (B, S) bool.

        use_bbox (default: the config's; may be traced): False gives every slot the null position
        feature unless more than one subject is present, as the reference code's `use_bbox=False`.
        """
        cfg = self.config
        b, s, n, _ = patch_tokens.shape
        if s != cfg.max_subjects or n != cfg.num_patch_tokens:
            raise ValueError(
                f"grounding net expects {cfg.max_subjects} slots of {cfg.num_patch_tokens} tokens, "
                f"got {s} slots of {n}"
            )
        slot = valid[:, :, None, None]
        patches = jnp.where(slot, patch_tokens.astype(jnp.float32), self.null_patch_feature[...])
        position = fourier_box_embedding(boxes, cfg.fourier_freqs, cfg.fourier_base)
        position = jnp.broadcast_to(position[:, :, None, :], (b, s, n, cfg.fourier_dim))
        several = jnp.sum(valid, axis=1) > 1
        use_bbox = cfg.use_bbox if use_bbox is None else use_bbox
        use_box = jnp.where(use_bbox, slot, several[:, None, None, None])
        use_box = use_box & cfg.box_embedding
        position = jnp.where(use_box, position, self.null_position_feature[...])
        x = self.norm(jnp.concatenate([patches, position], axis=-1))
        x = self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=False))
        return x.reshape(b, s * n, cfg.out_dim)
