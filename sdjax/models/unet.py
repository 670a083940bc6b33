"""The Subject-Diffusion UNet: Stable Diffusion's conditional UNet (1.x and 2.x layouts) in NNX.

Attribute names mirror diffusers' `UNet2DConditionModel` (conv_in, time_embedding, down_blocks,
mid_block, up_blocks, conv_norm_out, conv_out) so checkpoints map key for key. Additions of
Subject-Diffusion: `in_channels` 5 (latent + location mask), the gated grounding adapter in every
transformer block (`fuser`), and head-averaged cross-attention maps for the attention loss.
NHWC throughout; float32 parameters, compute dtype from the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.attention import Transformer2DModel, check_attention
from sdjax.models.embeddings import TimestepEmbedding, timestep_embedding
from sdjax.models.layers import GroupNorm, activation, conv, remat_call
from sdjax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
MID_BLOCK = "UNetMidBlock2DCrossAttn"
TIME_EMBED_MULT = 4
# SPEC's attention maps: 32, 16 and 8 px for a 64 px latent (SD at 512 px).
DEFAULT_MAP_FACTORS = (2, 4, 8)
COMPUTE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

IntOrTuple = int | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """UNet hyper-parameters; diffusers' names and meanings, plus sdjax's own fields.

    `attention_head_dim` is, as in diffusers' UNet2DConditionModel, the NUMBER of attention
    heads (per block, or one for all): SD 1.x uses 8, SD 2.x (5, 10, 20, 20), i.e. 64-wide heads.
    `attention_map_factors`: downsampling factors (relative to the latent) of the blocks whose
    cross-attention maps the attention loss reads; None: those of `DEFAULT_MAP_FACTORS` that the
    layout has. Factors given explicitly (a training config's) must all be in the layout.
    """

    in_channels: int = 5
    out_channels: int = 4
    sample_size: IntOrTuple = 64
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: IntOrTuple = 2
    down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
    mid_block_type: str = MID_BLOCK
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
    attention_head_dim: IntOrTuple = (5, 10, 20, 20)
    cross_attention_dim: int = 1024
    use_linear_projection: bool = True
    upcast_attention: bool = True
    transformer_layers_per_block: IntOrTuple = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    act_fn: str = "silu"
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    # sdjax
    grounding_dim: int = 1024
    use_adapter: bool = True
    remat: bool = False
    attention_block: int = 0  # self-attention tokens per block (`attention.attend`); 0: whole
    attention: str = "auto"  # the implementation, per backend by default (`attention.attend`)
    dtype: Any = jnp.float32
    attention_map_factors: tuple[int, ...] | None = None

    def __post_init__(self):
        for field in dataclasses.fields(self):  # lists (JSON, ConfigDict) → tuples: hashable
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"{n} block_out_channels but {len(self.down_block_types)} down and "
                f"{len(self.up_block_types)} up block types"
            )
        for kind, known in (
            (self.down_block_types, (CROSS_DOWN, PLAIN_DOWN)),
            (self.up_block_types, (CROSS_UP, PLAIN_UP)),
            ((self.mid_block_type,), (MID_BLOCK,)),
        ):
            for name in kind:
                if name not in known:
                    raise ValueError(f"unsupported block type {name!r}; sdjax knows {known}")
        for field in ("layers_per_block", "attention_head_dim", "transformer_layers_per_block"):
            value = getattr(self, field)
            if not isinstance(value, int) and len(value) != n:
                raise ValueError(f"{field}={value} needs one entry per block ({n})")
        check_attention(self.attention, self.attention_block)
        if jnp.dtype(self.dtype) not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype {self.dtype} unsupported; use float32 or bfloat16")
        known = self.cross_attention_factors()
        if self.attention_map_factors is None:
            found = tuple(f for f in DEFAULT_MAP_FACTORS if f in known)
            object.__setattr__(self, "attention_map_factors", found)
        for factor in self.attention_map_factors:
            if factor not in known:
                raise ValueError(
                    f"attention_map_factors={self.attention_map_factors} asks for the maps of a "
                    f"cross-attention block at factor {factor}, which this layout lacks (it has "
                    f"them at {sorted(set(known))}); ask for a subset of those"
                )

    def per_block(self, field: str) -> tuple[int, ...]:
        """A per-down-block tuple of an int-or-tuple field."""
        value = getattr(self, field)
        return (value,) * len(self.block_out_channels) if isinstance(value, int) else tuple(value)

    def cross_attention_factors(self) -> list[int]:
        """Downsampling factor of every block with cross-attention (down, mid, up)."""
        n = len(self.block_out_channels)
        down = [2**i for i, t in enumerate(self.down_block_types) if t == CROSS_DOWN]
        up = [2 ** (n - 1 - i) for i, t in enumerate(self.up_block_types) if t == CROSS_UP]
        return [*down, 2 ** (n - 1), *up]

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], **overrides: Any) -> UNetConfig:
        """The config of a diffusers `UNet2DConditionModel` (its config.json), with overrides.

        Options sdjax does not implement raise a ValueError naming them.
        """
        unsupported = [
            f"{key}={value!r}"
            for key, value in config.items()
            if key in _DIFFUSERS_FIXED and value not in _DIFFUSERS_FIXED[key]
        ]
        unknown = sorted(
            k
            for k in config
            if not k.startswith("_")
            and k not in _DIFFUSERS_FIXED
            and k not in _DIFFUSERS_FIELDS
            and k not in _DIFFUSERS_INERT
        )
        if config.get("attention_type", "default") not in ("default", "gated"):
            unsupported.append(f"attention_type={config['attention_type']!r}")
        if not isinstance(config.get("cross_attention_dim", 0), int):
            unsupported.append(f"cross_attention_dim={config['cross_attention_dim']!r}")
        tlpb = config.get("transformer_layers_per_block", 1)
        if not isinstance(tlpb, int) and any(not isinstance(t, int) for t in tlpb):
            unsupported.append(f"transformer_layers_per_block={tlpb!r}")
        if unsupported or unknown:
            raise ValueError(
                "UNet config options not supported by sdjax: "
                + ", ".join(unsupported + [f"{k} (unknown option)" for k in unknown])
            )
        values = {k: v for k, v in config.items() if k in _DIFFUSERS_FIELDS - {"attention_type"}}
        return cls(**{**values, **overrides})


_DIFFUSERS_FIELDS = {f.name for f in dataclasses.fields(UNetConfig)} | {"attention_type"}
# diffusers options sdjax supports only at these values (a UNet2DConditionModel's defaults).
_DIFFUSERS_FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "dual_cross_attention": (False,),
    "dropout": (0.0,),
    "num_attention_heads": (None,),
    "reverse_transformer_layers_per_block": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "projection_class_embeddings_input_dim": (None,),
    "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "cross_attention_norm": (None,),
}
# diffusers options without effect here (they only act with an option fixed off above).
_DIFFUSERS_INERT = {"addition_embed_type_num_heads"}


@dataclasses.dataclass
class Conditioning:
    """What every block of one UNet call sees besides the feature map."""

    temb: jax.Array
    context: jax.Array
    grounding: jax.Array | None
    adapter_scale: float | jax.Array
    positions: jax.Array | None
    grounding_layout: tuple[jax.Array, jax.Array] | None = None


def _new_resnet(cfg: UNetConfig, c_in: int, c_out: int, rngs: nnx.Rngs, scale: float = 1.0):
    return ResnetBlock2D(
        c_in,
        c_out,
        temb_channels=cfg.block_out_channels[0] * TIME_EMBED_MULT,
        groups=cfg.norm_num_groups,
        eps=cfg.norm_eps,
        act_fn=cfg.act_fn,
        output_scale_factor=scale,
        dtype=cfg.dtype,
        rngs=rngs,
    )


def _new_transformer(cfg: UNetConfig, channels: int, block: int, rngs: nnx.Rngs):
    return Transformer2DModel(
        channels,
        heads=cfg.per_block("attention_head_dim")[block],
        context_dim=cfg.cross_attention_dim,
        num_layers=cfg.per_block("transformer_layers_per_block")[block],
        groups=cfg.norm_num_groups,
        use_linear_projection=cfg.use_linear_projection,
        grounding_dim=cfg.grounding_dim if cfg.use_adapter else None,
        remat=cfg.remat,
        attention_block=cfg.attention_block,
        attention=cfg.attention,
        dtype=cfg.dtype,
        rngs=rngs,
    )


class _Stage(nnx.Module):
    """Resnets interleaved with optional transformers, shared by down, mid and up blocks."""

    resnets: nnx.List
    attentions: nnx.List | None
    remat: bool
    record_maps: bool

    def _resnet(self, i: int, h: jax.Array, cond: Conditioning) -> jax.Array:
        return remat_call(self.remat, self.resnets[i], h, cond.temb)

    def _attend(self, i: int, h: jax.Array, cond: Conditioning, maps: list) -> jax.Array:
        """The i-th transformer (if any); its cross-attention maps go to `maps` if recorded."""
        if self.attentions is None:
            return h
        positions = cond.positions if self.record_maps else None
        h, new_maps = self.attentions[i](
            h, cond.context, cond.grounding, cond.adapter_scale, positions, cond.grounding_layout
        )
        maps.extend(new_maps)
        return h


class DownBlock(_Stage):
    """diffusers' `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (without)."""

    def __init__(self, cfg: UNetConfig, index: int, *, rngs: nnx.Rngs):
        channels = cfg.block_out_channels
        c_in, c_out = channels[max(index - 1, 0)], channels[index]
        layers = cfg.per_block("layers_per_block")[index]
        self.remat = cfg.remat
        self.record_maps = 2**index in cfg.attention_map_factors
        self.resnets = nnx.List(
            [_new_resnet(cfg, c_in if j == 0 else c_out, c_out, rngs) for j in range(layers)]
        )
        self.attentions = (
            nnx.List([_new_transformer(cfg, c_out, index, rngs) for _ in range(layers)])
            if cfg.down_block_types[index] == CROSS_DOWN
            else None
        )
        self.downsamplers = (
            nnx.List(
                [Downsample2D(c_out, padding=cfg.downsample_padding, dtype=cfg.dtype, rngs=rngs)]
            )
            if index < len(channels) - 1
            else None
        )

    def __call__(
        self, h: jax.Array, cond: Conditioning, maps: list
    ) -> tuple[jax.Array, list[jax.Array]]:
        """Returns the output and the skip connections it leaves for the up path."""
        skips = []
        for i in range(len(self.resnets)):
            h = self._attend(i, self._resnet(i, h, cond), cond, maps)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class UNetMidBlock2DCrossAttn(_Stage):
    """Resnet, then (transformer, resnet) pairs at the lowest resolution."""

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        n = len(cfg.block_out_channels)
        channels = cfg.block_out_channels[-1]
        self.remat = cfg.remat
        self.record_maps = 2 ** (n - 1) in cfg.attention_map_factors
        self.resnets = nnx.List(
            [
                _new_resnet(cfg, channels, channels, rngs, cfg.mid_block_scale_factor)
                for _ in range(2)
            ]
        )
        self.attentions = nnx.List([_new_transformer(cfg, channels, n - 1, rngs)])

    def __call__(self, h: jax.Array, cond: Conditioning, maps: list) -> jax.Array:
        h = self._attend(0, self._resnet(0, h, cond), cond, maps)
        return self._resnet(1, h, cond)


class UpBlock(_Stage):
    """diffusers' `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (without)."""

    def __init__(self, cfg: UNetConfig, index: int, *, rngs: nnx.Rngs):
        n = len(cfg.block_out_channels)
        rev = cfg.block_out_channels[::-1]
        c_out, c_prev, c_skip = rev[index], rev[max(index - 1, 0)], rev[min(index + 1, n - 1)]
        layers = cfg.per_block("layers_per_block")[::-1][index] + 1
        block = n - 1 - index  # the matching down block: heads and transformer depth
        self.remat = cfg.remat
        self.record_maps = 2**block in cfg.attention_map_factors
        self.resnets = nnx.List(
            [
                _new_resnet(
                    cfg,
                    (c_prev if j == 0 else c_out) + (c_skip if j == layers - 1 else c_out),
                    c_out,
                    rngs,
                )
                for j in range(layers)
            ]
        )
        self.attentions = (
            nnx.List([_new_transformer(cfg, c_out, block, rngs) for _ in range(layers)])
            if cfg.up_block_types[index] == CROSS_UP
            else None
        )
        self.upsamplers = (
            nnx.List([Upsample2D(c_out, dtype=cfg.dtype, rngs=rngs)]) if index < n - 1 else None
        )

    def __call__(
        self, h: jax.Array, skips: list[jax.Array], cond: Conditioning, maps: list
    ) -> jax.Array:
        """Consumes its skip connections from the end of `skips` (in place)."""
        for i in range(len(self.resnets)):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = self._attend(i, self._resnet(i, h, cond), cond, maps)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, skips[-1].shape[1:3])
        return h


class UNet(nnx.Module):
    """Subject-Diffusion's denoiser: ε-prediction from (latent ⊕ mask, t, text, grounding)."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        cfg = self.config = config
        c0 = cfg.block_out_channels[0]
        n = len(cfg.block_out_channels)
        self.conv_in = conv(cfg.in_channels, c0, 3, dtype=cfg.dtype, rngs=rngs)
        self.time_embedding = TimestepEmbedding(
            c0, c0 * TIME_EMBED_MULT, act_fn=cfg.act_fn, dtype=cfg.dtype, rngs=rngs
        )
        self.down_blocks = nnx.List([DownBlock(cfg, i, rngs=rngs) for i in range(n)])
        self.mid_block = UNetMidBlock2DCrossAttn(cfg, rngs=rngs)
        self.up_blocks = nnx.List([UpBlock(cfg, i, rngs=rngs) for i in range(n)])
        self.conv_norm_out = GroupNorm(c0, cfg.norm_num_groups, cfg.norm_eps, rngs=rngs)
        self.conv_out = conv(c0, cfg.out_channels, 3, dtype=cfg.dtype, rngs=rngs)

    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array | int,
        encoder_hidden_states: jax.Array,
        grounding_tokens: jax.Array | None = None,
        *,
        adapter_scale: float | jax.Array = 1.0,
        attention_positions: jax.Array | None = None,
        grounding_layout: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
        """Noise prediction (B, H, W, out_channels) float32 for sample (B, H, W, in_channels).

        timesteps: scalar or (B,). encoder_hidden_states: (B, L, cross_attention_dim).
        grounding_tokens: (B, M, grounding_dim) or None (adapter skipped). adapter_scale: the β
        multiplying both gated adapter terms. attention_positions: (B, K) int32 text-token
        indices; when given, also returns one head-averaged cross-attention map (B, h, w, K)
        float32 per transformer block at `attention_map_factors`, in forward order.
        grounding_layout: the grounding tokens' boxes (B, M, 4) and valid (B, M); when given, each
        cell's adapters attend only to the tokens whose box covers it.
        """
        cfg = self.config
        if sample.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"sample has {sample.shape[-1]} channels, the UNet expects {cfg.in_channels} "
                "(NHWC: latent channels then the location mask)"
            )
        batch = sample.shape[0]
        t = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
        t_code = timestep_embedding(
            t,
            cfg.block_out_channels[0],
            flip_sin_to_cos=cfg.flip_sin_to_cos,
            freq_shift=cfg.freq_shift,
        )
        cond = Conditioning(
            temb=self.time_embedding(t_code.astype(cfg.dtype)),
            context=encoder_hidden_states.astype(cfg.dtype),
            grounding=None if grounding_tokens is None else grounding_tokens.astype(cfg.dtype),
            adapter_scale=adapter_scale,
            positions=attention_positions,
            grounding_layout=grounding_layout,
        )
        maps: list[jax.Array] = []
        h = self.conv_in(sample.astype(cfg.dtype))
        skips = [h]
        for block in self.down_blocks:
            h, new_skips = block(h, cond, maps)
            skips.extend(new_skips)
        h = self.mid_block(h, cond, maps)
        for block in self.up_blocks:
            h = block(h, skips, cond, maps)
        act = activation(cfg.act_fn)
        out = self.conv_out(act(self.conv_norm_out(h))).astype(jnp.float32)
        return out if attention_positions is None else (out, maps)
