"""Grounding net: subject patch tokens + Fourier-embedded boxes → grounding tokens for the adapters."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models import layers
from sdjax.models.init import ZEROS


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
    # True (beyond SPEC): each patch token's position is its tile of the subject image's canvas
    # placed on the box (`patch_tiles`), not the whole box.
    patch_boxes: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        if self.patch_boxes and math.isqrt(self.num_patch_tokens) ** 2 != self.num_patch_tokens:
            raise ValueError(
                f"patch_boxes needs a square grid of patch tokens, got {self.num_patch_tokens}"
            )

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


def patch_tiles(boxes: jax.Array, grid: int) -> jax.Array:
    """(..., 4) normalised boxes → (..., grid * grid, 4): the tiles, row by row, of the square
    centred on each box with its longer side: where the subject image's patches land when its
    canvas is placed on the box (the box padded to a square, as the reader's white placement and
    the sampling pipeline's references are made). Exact for square images."""
    x0, y0, x1, y1 = (boxes[..., k] for k in range(4))
    side = jnp.maximum(x1 - x0, y1 - y0)
    step = (side / grid)[..., None]
    offsets = jnp.arange(grid, dtype=jnp.float32) * step  # (..., grid)
    left = ((x0 + x1 - side) / 2)[..., None] + offsets
    top = ((y0 + y1 - side) / 2)[..., None] + offsets
    shape = (*boxes.shape[:-1], grid, grid)
    lefts = jnp.broadcast_to(left[..., None, :], shape)  # column varies along the last axis
    tops = jnp.broadcast_to(top[..., :, None], shape)  # row along the one before
    steps = step[..., None]
    tiles = jnp.stack([lefts, tops, lefts + steps, tops + steps], axis=-1)
    return tiles.reshape(*boxes.shape[:-1], grid * grid, 4)


def token_boxes(boxes: jax.Array, config: GroundingConfig) -> jax.Array:
    """Subjects' boxes (B, S, 4) → each grounding token's box (B, S, N, 4): its patch tile with
    `patch_boxes`, else the subject's box."""
    n = config.num_patch_tokens
    if config.patch_boxes:
        return patch_tiles(boxes.astype(jnp.float32), math.isqrt(n))
    return jnp.broadcast_to(boxes[:, :, None, :], (*boxes.shape[:2], n, 4))


def box_cells(boxes: jax.Array, valid: jax.Array, height: int, width: int) -> jax.Array:
    """(B, S, height, width) bool: the cells of a height x width grid whose centre is inside each
    valid box. boxes (B, S, 4) normalised (x0, y0, x1, y1); valid (B, S) bool."""
    ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
    xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
    x0, y0, x1, y1 = (boxes[..., k, None] for k in range(4))  # (B, S, 1)
    in_y = (y0 <= ys) & (ys <= y1)  # (B, S, height)
    in_x = (x0 <= xs) & (xs <= x1)  # (B, S, width)
    return in_y[..., :, None] & in_x[..., None, :] & valid[..., None, None]


def grounding_key_mask(layout: tuple[jax.Array, jax.Array], height: int, width: int) -> jax.Array:
    """(B, height * width, M) bool: which grounding tokens each visual cell may attend to.

    layout: the boxes (B, M, 4) and valid (B, M) of the M grounding tokens; a cell sees every
    valid token whose box covers its centre.
    """
    boxes, valid = layout
    cells = box_cells(boxes, valid, height, width)
    return jnp.swapaxes(cells.reshape(*valid.shape, height * width), 1, 2)


class GroundingNet(nnx.Module):
    """Per subject: concat(patch tokens, Fourier(box)) → LayerNorm → Linear → GELU → Linear.

    Empty slots use learnable null patch and position features (zero-initialised). Output tokens of
    all slots are concatenated along the sequence: (B, max_subjects * num_patch_tokens, out_dim).
    """

    def __init__(self, config: GroundingConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        n, in_dim = config.num_patch_tokens, config.patch_dim + config.fourier_dim
        self.null_patch_feature = nnx.Param(jnp.zeros((1, n, config.patch_dim)), init=ZEROS)
        self.null_position_feature = nnx.Param(jnp.zeros((1, n, config.fourier_dim)), init=ZEROS)
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
        position = fourier_box_embedding(
            token_boxes(boxes, cfg), cfg.fourier_freqs, cfg.fourier_base
        )  # (B, S, N, fourier_dim)
        several = jnp.sum(valid, axis=1) > 1
        use_bbox = cfg.use_bbox if use_bbox is None else use_bbox
        use_box = jnp.where(use_bbox, slot, several[:, None, None, None])
        use_box = use_box & cfg.box_embedding
        position = jnp.where(use_box, position, self.null_position_feature[...])
        x = self.norm(jnp.concatenate([patches, position], axis=-1))
        x = self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=False))
        return x.reshape(b, s * n, cfg.out_dim)
