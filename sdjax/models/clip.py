"""The CLIP transformer encoder shared by the text and vision towers (pre-LN, as in transformers).

Attribute names mirror transformers' `CLIPEncoder`: `layers[i].self_attn.{q,k,v,out}_proj`,
`layer_norm1`, `mlp.fc1`/`mlp.fc2`, `layer_norm2`. Attention logits and softmax are float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.layers import DType, LayerNorm, activation, linear, remat_call

OUT_AXES = ("mlp", "embed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPEncoderConfig:
    """Transformer sizes common to both CLIP towers; defaults are transformers' CLIPVisionConfig."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dtype: DType = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        activation(self.hidden_act)

    @classmethod
    def from_hf(
        cls, config: dict[str, Any], *, dtype: DType = jnp.float32, remat: bool = False
    ) -> Self:
        """Reads a transformers `config.json` dict; absent keys take transformers' defaults."""
        names = {f.name for f in dataclasses.fields(cls)} - {"dtype", "remat"}
        return cls(**{k: config[k] for k in names if k in config}, dtype=dtype, remat=remat)


def _split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """(..., T, D) → (..., T, heads, D // heads)."""
    return x.reshape(*x.shape[:-1], num_heads, -1)


class CLIPAttention(nnx.Module):
    """Multi-head self-attention, optionally causal."""

    def __init__(self, config: CLIPEncoderConfig, *, rngs: nnx.Rngs):
        d, dtype = config.hidden_size, config.dtype
        self.num_heads = config.num_attention_heads
        self.q_proj = linear(d, d, rngs=rngs, dtype=dtype)
        self.k_proj = linear(d, d, rngs=rngs, dtype=dtype)
        self.v_proj = linear(d, d, rngs=rngs, dtype=dtype)
        self.out_proj = linear(d, d, rngs=rngs, dtype=dtype, axes=OUT_AXES)

    def __call__(self, x: jax.Array, *, causal: bool = False) -> jax.Array:
        q, k, v = (
            _split_heads(p(x), self.num_heads) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.reshape(x.shape))


class CLIPMLP(nnx.Module):
    """fc1 → activation → fc2."""

    def __init__(self, config: CLIPEncoderConfig, *, rngs: nnx.Rngs):
        d, f, dtype = config.hidden_size, config.intermediate_size, config.dtype
        self.act = activation(config.hidden_act)
        self.fc1 = linear(d, f, rngs=rngs, dtype=dtype)
        self.fc2 = linear(f, d, rngs=rngs, dtype=dtype, axes=OUT_AXES)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: CLIPEncoderConfig, *, rngs: nnx.Rngs):
        d, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = CLIPAttention(config, rngs=rngs)
        self.layer_norm1 = LayerNorm(d, eps, rngs=rngs)
        self.mlp = CLIPMLP(config, rngs=rngs)
        self.layer_norm2 = LayerNorm(d, eps, rngs=rngs)

    def __call__(self, x: jax.Array, *, causal: bool = False) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x), causal=causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    """A stack of `CLIPEncoderLayer`s, each rematerialised in the backward pass if `remat`."""

    def __init__(self, config: CLIPEncoderConfig, *, rngs: nnx.Rngs):
        self.remat = config.remat
        self.layers = nnx.List(
            [CLIPEncoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)]
        )

    def __call__(self, x: jax.Array, *, causal: bool = False) -> jax.Array:
        for layer in self.layers:
            x = remat_call(self.remat, layer, x, causal=causal)
        return x
