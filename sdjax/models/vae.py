"""AutoencoderKL (the Stable Diffusion VAE), mirroring diffusers' names, NHWC.

`encode(images in [-1, 1])` returns the latent `DiagonalGaussian`; `decode(latents)` returns images.
Neither applies `config.scaling_factor`: as in diffusers, the caller multiplies sampled latents by
it before diffusion and divides by it before decoding. SD's decoder overflows in half precision,
so decode with a float32 VAE (`VAEConfig.dtype`, the default).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

import jax
import jax.numpy as jnp
from flax import nnx, struct

from sdjax.models.layers import DType, GroupNorm, activation, conv, linear
from sdjax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers clamps the encoder's log-variance to this range
OUT_ACT = "silu"  # diffusers' `conv_act` before `conv_out` is SiLU whatever `act_fn` is
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """AutoencoderKL sizes; defaults are Stable Diffusion's VAE."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215
    dtype: DType = jnp.float32

    def __post_init__(self):
        # configs may arrive with a list; a tuple keeps the config hashable (static under jit)
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))

    @classmethod
    def from_diffusers(cls, config: dict[str, Any], *, dtype: DType = jnp.float32) -> Self:
        """Reads a diffusers `AutoencoderKL` `config.json` dict."""
        for key, kind in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
            unsupported = sorted({t for t in config.get(key, ()) if t != kind})
            if unsupported:
                raise ValueError(f"unsupported {key} {unsupported}; sdjax builds only {kind}")
        names = {f.name for f in dataclasses.fields(cls)} - {"dtype"}
        return cls(**{k: config[k] for k in names if k in config}, dtype=dtype)


@struct.dataclass
class DiagonalGaussian:
    """The latent posterior N(mean, exp(logvar)), float32, NHWC."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> Self:
        """Splits the channels into (mean, logvar) and clamps logvar to `LOGVAR_RANGE`."""
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return cls(mean=mean, logvar=jnp.clip(logvar, *LOGVAR_RANGE))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """mean + std * eps, eps ~ N(0, 1)."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean


class MidBlockAttention(nnx.Module):
    """Single-head self-attention over all pixels, GroupNorm first, with a residual connection."""

    def __init__(self, channels: int, config: VAEConfig, *, rngs: nnx.Rngs):
        dtype = config.dtype
        self.group_norm = GroupNorm(channels, config.norm_num_groups, config.norm_eps, rngs=rngs)
        self.to_q = linear(channels, channels, rngs=rngs, dtype=dtype)
        self.to_k = linear(channels, channels, rngs=rngs, dtype=dtype)
        self.to_v = linear(channels, channels, rngs=rngs, dtype=dtype)
        self.to_out = linear(channels, channels, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = self.group_norm(x).reshape(batch, height * width, 1, channels)
        h = jax.nn.dot_product_attention(self.to_q(h), self.to_k(h), self.to_v(h))
        return x + self.to_out(h).reshape(x.shape)


def _resnet(in_channels: int, out_channels: int, config: VAEConfig, rngs: nnx.Rngs):
    return ResnetBlock2D(
        in_channels,
        out_channels,
        temb_channels=None,
        groups=config.norm_num_groups,
        eps=config.norm_eps,
        act_fn=config.act_fn,
        dtype=config.dtype,
        rngs=rngs,
    )


class UNetMidBlock2D(nnx.Module):
    """resnet → (attention → resnet)."""

    def __init__(self, channels: int, config: VAEConfig, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([_resnet(channels, channels, config, rngs) for _ in range(2)])
        self.attentions = nnx.List(
            [MidBlockAttention(channels, config, rngs=rngs)]
            if config.mid_block_add_attention
            else []
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nnx.Module):
    """`num_layers` resnets, then an optional stride-2 downsampler (bottom/right padding)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        downsample: bool,
        config: VAEConfig,
        *,
        rngs: nnx.Rngs,
    ):
        self.resnets = nnx.List(
            [
                _resnet(in_channels if i == 0 else out_channels, out_channels, config, rngs)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = nnx.List(
            [Downsample2D(out_channels, padding=0, dtype=config.dtype, rngs=rngs)]
            if downsample
            else []
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in (*self.resnets, *self.downsamplers):
            x = block(x)
        return x


class UpDecoderBlock2D(nnx.Module):
    """`num_layers` resnets, then an optional nearest ×2 upsampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        upsample: bool,
        config: VAEConfig,
        *,
        rngs: nnx.Rngs,
    ):
        self.resnets = nnx.List(
            [
                _resnet(in_channels if i == 0 else out_channels, out_channels, config, rngs)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nnx.List(
            [Upsample2D(out_channels, dtype=config.dtype, rngs=rngs)] if upsample else []
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in (*self.resnets, *self.upsamplers):
            x = block(x)
        return x


class _Head(nnx.Module):
    """GroupNorm → SiLU → 3×3 conv: the last stage of the encoder and the decoder."""

    def __init__(self, in_channels: int, out_channels: int, config: VAEConfig, *, rngs: nnx.Rngs):
        self.conv_norm_out = GroupNorm(
            in_channels, config.norm_num_groups, config.norm_eps, rngs=rngs
        )
        self.act = activation(OUT_ACT)
        self.conv_out = conv(in_channels, out_channels, 3, rngs=rngs, dtype=config.dtype)

    def head(self, x: jax.Array) -> jax.Array:
        return self.conv_out(self.act(self.conv_norm_out(x)))


class Encoder(_Head):
    """Images (B, H, W, in_channels) → moments (B, H/f, W/f, 2 * latent_channels)."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        channels = config.block_out_channels
        super().__init__(channels[-1], 2 * config.latent_channels, config, rngs=rngs)
        self.conv_in = conv(config.in_channels, channels[0], 3, rngs=rngs, dtype=config.dtype)
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock2D(
                    channels[max(i - 1, 0)],
                    out,
                    config.layers_per_block,
                    i < len(channels) - 1,
                    config,
                    rngs=rngs,
                )
                for i, out in enumerate(channels)
            ]
        )
        self.mid_block = UNetMidBlock2D(channels[-1], config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.head(self.mid_block(x))


class Decoder(_Head):
    """Latents (B, h, w, latent_channels) → images (B, h*f, w*f, out_channels)."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        channels = tuple(reversed(config.block_out_channels))
        super().__init__(channels[-1], config.out_channels, config, rngs=rngs)
        self.conv_in = conv(config.latent_channels, channels[0], 3, rngs=rngs, dtype=config.dtype)
        self.mid_block = UNetMidBlock2D(channels[0], config, rngs=rngs)
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock2D(
                    channels[max(i - 1, 0)],
                    out,
                    config.layers_per_block + 1,
                    i < len(channels) - 1,
                    config,
                    rngs=rngs,
                )
                for i, out in enumerate(channels)
            ]
        )

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.head(x)


class AutoencoderKL(nnx.Module):
    """The VAE. Latents are unscaled: multiply by `config.scaling_factor` for diffusion."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        moments, latents, dtype = 2 * config.latent_channels, config.latent_channels, config.dtype
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.quant_conv = (
            conv(moments, moments, 1, rngs=rngs, dtype=dtype) if config.use_quant_conv else None
        )
        self.post_quant_conv = (
            conv(latents, latents, 1, rngs=rngs, dtype=dtype)
            if config.use_post_quant_conv
            else None
        )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, images: jax.Array) -> DiagonalGaussian:
        """images (B, H, W, C) in [-1, 1] → the latent posterior (float32)."""
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, latents: jax.Array) -> jax.Array:
        """Unscaled latents (B, h, w, latent_channels) → images (B, h*f, w*f, C), about [-1, 1]."""
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)
