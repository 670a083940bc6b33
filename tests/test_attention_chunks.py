"""Self-attention over query chunks equals attention over all queries at once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sdjax.models.attention import Transformer2DModel, attend

TOLERANCE = 1e-5  # float32; each query row is computed alike whatever its chunk


@pytest.mark.parametrize("tokens, chunk", [(96, 32), (100, 32), (20, 32)])
def test_chunked_attention_equals_whole_and_so_do_gradients(tokens, chunk):
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (2, tokens, 3, 8)) for key in keys[:3])
    weights = jax.random.normal(keys[3], (2, tokens, 3, 8))

    def loss(q, k, v, chunk):
        return jnp.sum(attend(q, k, v, chunk) * weights)

    whole, chunked = attend(q, k, v), attend(q, k, v, chunk)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=TOLERANCE)
    grads_whole = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, 0)
    grads_chunked = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, chunk)
    for ours, ref in zip(grads_chunked, grads_whole, strict=True):
        np.testing.assert_allclose(ours, ref, atol=TOLERANCE)


def test_transformer_with_chunks_and_adapter_matches_unchunked():
    def build(chunk: int) -> Transformer2DModel:
        return Transformer2DModel(
            32,
            heads=2,
            context_dim=16,
            grounding_dim=24,
            use_linear_projection=True,
            query_chunk=chunk,
            rngs=nnx.Rngs(0),
        )

    whole, chunked = build(0), build(24)
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (2, 8, 8, 32))  # 64 visual tokens, + 5 grounding tokens
    context = jax.random.normal(keys[1], (2, 7, 16))
    grounding = jax.random.normal(keys[2], (2, 5, 24))
    for block in (*whole.transformer_blocks, *chunked.transformer_blocks):
        block.fuser.alpha_attn[...] = 1.0  # open the adapter's gate
    ours, _ = chunked(x, context, grounding)
    ref, _ = whole(x, context, grounding)
    np.testing.assert_allclose(ours, ref, atol=TOLERANCE)
