"""CLIP text tower with projection, mirroring transformers' `CLIPTextModelWithProjection`.

The pooled output is `last_hidden_state` at the end-of-text token, projected into the joint
image-text space (`text_projection`, no bias): the text side of the CLIP-T score. The pooling
position follows transformers: the highest id (legacy configs with `eos_token_id == 2`, whose
end-of-text token has the vocabulary's last id), else the first `eos_token_id`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.layers import linear
from sdjax.models.text_encoder import CLIPTextConfig, CLIPTextTransformer

LEGACY_EOS_ID = 2  # transformers: configs written before its fix of the CLIP eos id


def pooled_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """(B,) position of the end-of-text token of each row of `input_ids` (B, L)."""
    if eos_token_id == LEGACY_EOS_ID:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class CLIPTextModelWithProjection(nnx.Module):
    """Projected text embeddings (B, projection_dim) of token ids (B, L)."""

    def __init__(
        self, config: CLIPTextConfig, projection_dim: int, eos_token_id: int, *, rngs: nnx.Rngs
    ):
        self.config = config
        self.eos_token_id = eos_token_id
        self.text_model = CLIPTextTransformer(config, rngs=rngs)
        self.text_projection = linear(
            config.hidden_size, projection_dim, rngs=rngs, dtype=config.dtype, use_bias=False
        )

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        hidden = self.text_model(input_ids)
        positions = pooled_positions(input_ids, self.eos_token_id)
        pooled = jnp.take_along_axis(hidden, positions[:, None, None], axis=1)[:, 0]
        return self.text_projection(pooled)
