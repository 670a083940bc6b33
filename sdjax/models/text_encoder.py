"""CLIP text encoder with subject fusion (SPEC "Fusion text encoder") and the CLS projector.

`CLIPTextModel` mirrors transformers' (`text_model.embeddings.token_embedding`, ...). Before the
positional embeddings are added, each valid subject's embedding replaces the token embedding at
its placeholder (`sks`) position; the transformer then runs as usual. The conditioning is
`last_hidden_state` (after `final_layer_norm`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.clip import OUT_AXES, CLIPEncoder, CLIPEncoderConfig
from sdjax.models.layers import DType, LayerNorm, activation, embedding, linear


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPTextConfig(CLIPEncoderConfig):
    """Text tower sizes; defaults are transformers' CLIPTextConfig.

    hidden_act: `quick_gelu` for CLIP ViT-L/14 (SD 1.x), `gelu` for OpenCLIP ViT-H/14 (SD 2.x).
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    max_position_embeddings: int = 77


def replace_placeholders(
    token_embeds: jax.Array,
    subject_embeds: jax.Array,
    positions: jax.Array,
    valid: jax.Array,
) -> jax.Array:
    """Token embeddings (B, L, D) with row `positions[b, s]` set to `subject_embeds[b, s]` where valid.

    subject_embeds (B, S, D), positions (B, S) int, valid (B, S) bool. Invalid slots leave their
    position's token embedding unchanged; valid slots of one sample must hold distinct positions.
    """
    length = token_embeds.shape[1]
    hits = (positions[..., None] == jnp.arange(length)) & valid[..., None]  # (B, S, L)
    scattered = jnp.einsum(
        "bsl,bsd->bld", hits.astype(subject_embeds.dtype), subject_embeds
    ).astype(token_embeds.dtype)
    return jnp.where(hits.any(axis=1)[..., None], scattered, token_embeds)


class CLIPTextEmbeddings(nnx.Module):
    """Token embeddings (with subject fusion) plus learned positional embeddings."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        d, dtype = config.hidden_size, config.dtype
        self.token_embedding = embedding(config.vocab_size, d, rngs=rngs, dtype=dtype)
        self.position_embedding = embedding(
            config.max_position_embeddings, d, rngs=rngs, dtype=dtype
        )

    def __call__(
        self,
        input_ids: jax.Array,
        subject_embeds: jax.Array | None = None,
        placeholder_positions: jax.Array | None = None,
        subject_valid: jax.Array | None = None,
    ) -> jax.Array:
        length, max_length = input_ids.shape[-1], self.position_embedding.num_embeddings
        if length > max_length:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings {max_length}"
            )
        x = self.token_embedding(input_ids)
        if subject_embeds is not None:
            if placeholder_positions is None:
                raise ValueError("subject_embeds given without placeholder_positions")
            if subject_valid is None:
                subject_valid = jnp.ones(placeholder_positions.shape, dtype=bool)
            x = replace_placeholders(x, subject_embeds, placeholder_positions, subject_valid)
        return x + self.position_embedding(jnp.arange(length))


class CLIPTextTransformer(nnx.Module):
    """Embeddings → causal encoder → final LayerNorm."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.embeddings = CLIPTextEmbeddings(config, rngs=rngs)
        self.encoder = CLIPEncoder(config, rngs=rngs)
        self.final_layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps, rngs=rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        subject_embeds: jax.Array | None = None,
        placeholder_positions: jax.Array | None = None,
        subject_valid: jax.Array | None = None,
    ) -> jax.Array:
        x = self.embeddings(input_ids, subject_embeds, placeholder_positions, subject_valid)
        return self.final_layer_norm(self.encoder(x, causal=True))


class CLIPTextModel(nnx.Module):
    """The text encoder; returns `last_hidden_state` (B, L, hidden_size) in the compute dtype."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTransformer(config, rngs=rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        subject_embeds: jax.Array | None = None,
        placeholder_positions: jax.Array | None = None,
        subject_valid: jax.Array | None = None,
    ) -> jax.Array:
        """input_ids (B, L) int; optional fusion inputs as in `replace_placeholders`."""
        return self.text_model(input_ids, subject_embeds, placeholder_positions, subject_valid)


class CLSProjector(nnx.Module):
    """Image CLS (d_cls) → text width (d_txt): LayerNorm → Linear → GELU → Linear (SPEC §1)."""

    def __init__(
        self,
        d_cls: int,
        d_txt: int,
        *,
        rngs: nnx.Rngs,
        dtype: DType = jnp.float32,
        layer_norm_eps: float = 1e-5,
    ):
        self.layer_norm = LayerNorm(d_cls, layer_norm_eps, rngs=rngs)
        self.fc1 = linear(d_cls, d_txt, rngs=rngs, dtype=dtype)
        self.act = activation("gelu")
        self.fc2 = linear(d_txt, d_txt, rngs=rngs, dtype=dtype, axes=OUT_AXES)

    def __call__(self, cls_embeds: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(self.layer_norm(cls_embeds))))
