"""Residual blocks and resamplers shared by the UNet and the VAE (NHWC, diffusers names).

`ResnetBlock2D` (norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut), `Downsample2D` and
`Upsample2D` (a `conv` each) map key for key onto diffusers checkpoints. Parameters carry the
logical axis names of `sdjax.models.layers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.layers import DType, GroupNorm, activation, conv, linear


class ResnetBlock2D(nnx.Module):
    """GroupNorm → act → conv → (+ time embedding) → GroupNorm → act → conv, plus a shortcut.

    `temb_channels=None` builds a block without time conditioning (the VAE's). The 1×1
    `conv_shortcut` exists when the channel count changes. The sum is divided by
    `output_scale_factor`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        act_fn: str = "silu",
        output_scale_factor: float = 1.0,
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_channels = out_channels or in_channels
        self.act = activation(act_fn)
        self.output_scale_factor = output_scale_factor
        self.norm1 = GroupNorm(in_channels, groups, eps, rngs=rngs)
        self.conv1 = conv(in_channels, out_channels, 3, dtype=dtype, rngs=rngs)
        self.time_emb_proj = (
            linear(temb_channels, out_channels, dtype=dtype, rngs=rngs)
            if temb_channels is not None
            else None
        )
        self.norm2 = GroupNorm(out_channels, groups_out or groups, eps, rngs=rngs)
        self.conv2 = conv(out_channels, out_channels, 3, dtype=dtype, rngs=rngs)
        self.conv_shortcut = (
            conv(in_channels, out_channels, 1, dtype=dtype, rngs=rngs)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        h = self.conv1(self.act(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(self.act(temb))[:, None, None, :]
        h = self.conv2(self.act(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (shortcut + h) / self.output_scale_factor


class Downsample2D(nnx.Module):
    """A stride-2 3×3 `conv` halving height and width.

    `padding=1` pads symmetrically (the UNet); `padding=0` pads one row and column at the bottom
    and right only (the VAE encoder), as diffusers does.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        *,
        padding: int = 1,
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.asymmetric = padding == 0
        self.conv = conv(
            channels, out_channels or channels, 3, stride=2, padding=padding, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.asymmetric:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


def upsample_nearest(x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
    """Nearest-neighbour resize of an NHWC map to `size` (default: twice the size), as PyTorch.

    Output pixel i reads input pixel floor(i * in / out), PyTorch's `mode="nearest"` rule.
    """
    height, width = x.shape[1:3]
    if size is None or tuple(size) == (2 * height, 2 * width):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (jnp.arange(size[0]) * height) // size[0]
    cols = (jnp.arange(size[1]) * width) // size[1]
    return x[:, rows][:, :, cols]


class Upsample2D(nnx.Module):
    """Nearest ×2 upsampling (or to an explicit `size`) followed by a 3×3 `conv`."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        *,
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.conv = conv(channels, out_channels or channels, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        return self.conv(upsample_nearest(x, size))
