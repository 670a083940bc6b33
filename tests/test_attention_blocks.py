"""sdjax's attention equals `jax.nn.dot_product_attention`, whole or by blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sdjax.models.attention import Transformer2DModel, attend

TOLERANCE = 2e-5  # float32, max abs difference


@pytest.mark.parametrize(
    "tokens, num_keys, block",
    [(96, 96, 0), (96, 96, 32), (100, 100, 32), (20, 20, 32), (40, 70, 32)],
)
def test_attention_equals_jax_attention_and_so_do_gradients(tokens, num_keys, block):
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, tokens, 3, 8))
    k, v = (jax.random.normal(key, (2, num_keys, 3, 8)) for key in keys[1:3])
    weights = jax.random.normal(keys[3], (2, tokens, 3, 8))

    def loss(attention, q, k, v):
        return jnp.sum(attention(q, k, v) * weights)

    ours = lambda q, k, v: attend(q, k, v, block)  # noqa: E731
    reference = jax.nn.dot_product_attention
    assert ours(q, k, v).shape == reference(q, k, v).shape
    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), atol=TOLERANCE)
    grads = jax.grad(loss, argnums=(1, 2, 3))(ours, q, k, v)
    expected = jax.grad(loss, argnums=(1, 2, 3))(reference, q, k, v)
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=TOLERANCE)


def test_transformer_with_blocks_and_adapter_matches_whole():
    def build(block: int) -> Transformer2DModel:
        return Transformer2DModel(
            32,
            heads=2,
            context_dim=16,
            grounding_dim=24,
            use_linear_projection=True,
            attention_block=block,
            rngs=nnx.Rngs(0),
        )

    whole, blocked = build(0), build(24)
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (2, 8, 8, 32))  # 64 visual tokens, + 5 grounding tokens
    context = jax.random.normal(keys[1], (2, 7, 16))
    grounding = jax.random.normal(keys[2], (2, 5, 24))
    for block in (*whole.transformer_blocks, *blocked.transformer_blocks):
        block.fuser.alpha_attn[...] = 1.0  # open the adapter's gate
    ours, _ = blocked(x, context, grounding)
    ref, _ = whole(x, context, grounding)
    np.testing.assert_allclose(ours, ref, atol=TOLERANCE)
