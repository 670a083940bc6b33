"""sdjax's attention equals `jax.nn.dot_product_attention`, whole or by blocks, and every
implementation that runs on CPU (`einsum`, `blocked`, `xla`) equals a NumPy softmax attention and
the others, values and gradients, with and without a key mask; `auto` picks per backend; the
box-masked adapter equals the plain adapter given only the subjects whose box covers a cell."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sdjax.models.attention import (
    GatedSelfAttentionDense,
    Transformer2DModel,
    attend,
    backend_attention,
    cudnn_accepts,
)
from sdjax.models.grounding import grounding_key_mask
from sdjax.models.unet import UNetConfig

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


CPU_KINDS = ("einsum", "blocked", "xla")
BLOCK = 32


def numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask=None) -> np.ndarray:
    """softmax(q·k / sqrt(H)) v per head, in float64, over each query's True keys of a
    (B, T, S) mask."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask[:, None], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def test_every_cpu_implementation_equals_numpy_and_the_others():
    keys = jax.random.split(jax.random.key(2), 4)
    q = jax.random.normal(keys[0], (2, 100, 3, 8))
    k, v = (jax.random.normal(key, (2, 100, 3, 8)) for key in keys[1:3])
    weights = jax.random.normal(keys[3], q.shape)
    want = numpy_attention(q, k, v)
    grads = {}
    for kind in CPU_KINDS:
        run = lambda q, k, v, kind=kind: attend(q, k, v, BLOCK, kind)  # noqa: E731
        np.testing.assert_allclose(run(q, k, v), want, atol=TOLERANCE, err_msg=kind)
        loss = lambda q, k, v, run=run: jnp.sum(run(q, k, v) * weights)  # noqa: E731
        grads[kind] = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for kind in CPU_KINDS[1:]:
        for got, ref in zip(grads[kind], grads[CPU_KINDS[0]], strict=True):
            np.testing.assert_allclose(got, ref, atol=TOLERANCE, err_msg=kind)


def test_every_cpu_implementation_keeps_queries_to_their_masked_keys():
    keys = jax.random.split(jax.random.key(3), 4)
    q = jax.random.normal(keys[0], (2, 100, 3, 8))
    k, v = (jax.random.normal(key, (2, 110, 3, 8)) for key in keys[1:3])
    mask = np.array(jax.random.bernoulli(keys[3], 0.3, (2, 100, 110)))
    mask[:, :, 0] = True  # every query keeps a key
    want = numpy_attention(q, k, v, mask)
    for kind in CPU_KINDS:
        got = attend(q, k, v, BLOCK, kind, jnp.asarray(mask))
        np.testing.assert_allclose(got, want, atol=TOLERANCE, err_msg=kind)


def test_box_masked_adapter_equals_the_plain_adapter_given_only_the_covering_subjects():
    side, slots, tokens, dim = 4, 2, 3, 16
    adapter = GatedSelfAttentionDense(dim, 8, heads=2, dim_head=8, rngs=nnx.Rngs(0))
    adapter.alpha_attn[...] = 1.0
    adapter.alpha_dense[...] = 1.0
    keys = jax.random.split(jax.random.key(4), 2)
    x = jax.random.normal(keys[0], (2, side * side, dim))
    grounding = jax.random.normal(keys[1], (2, slots * tokens, 8))
    # Slot 0 the left half, slot 1 the top-right 3 x 3 cells (overlapping slot 0 in column 1);
    # in the second example slot 1 is empty.
    boxes = np.array([[[0.0, 0.0, 0.5, 1.0], [0.3, 0.0, 1.0, 0.7]]] * 2, np.float32)
    valid = np.array([[True, True], [True, False]])
    layout = (np.repeat(boxes, tokens, axis=1), np.repeat(valid, tokens, axis=1))  # per token
    mask = grounding_key_mask(jax.tree.map(jnp.asarray, layout), side, side)
    masked = adapter(x, grounding, grounding_mask=mask)
    for b in range(2):
        for cell in range(side * side):
            centre = ((cell % side + 0.5) / side, (cell // side + 0.5) / side)
            covering = [
                s
                for s in range(slots)
                if valid[b, s]
                and boxes[b, s, 0] <= centre[0] <= boxes[b, s, 2]
                and boxes[b, s, 1] <= centre[1] <= boxes[b, s, 3]
            ]
            subset = grounding[b : b + 1].reshape(slots, tokens, 8)[np.array(covering, int)]
            plain = adapter(x[b : b + 1], subset.reshape(1, -1, 8))
            np.testing.assert_allclose(
                masked[b, cell], plain[0, cell], atol=TOLERANCE, err_msg=f"{b} {cell} {covering}"
            )


@pytest.mark.parametrize("block, kind", [(24, "blocked"), (24, "auto"), (24, "xla"), (0, "xla")])
def test_transformer_with_adapter_of_each_implementation_matches_einsum(block, kind):
    def build(block: int, kind: str) -> Transformer2DModel:
        return Transformer2DModel(
            32,
            heads=2,
            context_dim=16,
            grounding_dim=24,
            use_linear_projection=True,
            attention_block=block,
            attention=kind,
            rngs=nnx.Rngs(0),
        )

    ours, whole = build(block, kind), build(0, "einsum")
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (2, 8, 8, 32))  # 64 visual tokens, + 5 grounding tokens
    context = jax.random.normal(keys[1], (2, 7, 16))
    grounding = jax.random.normal(keys[2], (2, 5, 24))
    for layer in (*ours.transformer_blocks, *whole.transformer_blocks):
        layer.fuser.alpha_attn[...] = 1.0  # open the adapter's gate
    np.testing.assert_allclose(
        ours(x, context, grounding)[0], whole(x, context, grounding)[0], atol=TOLERANCE
    )


def test_auto_picks_per_backend_and_bad_choices_are_refused():
    assert backend_attention("cpu") == "blocked"
    assert backend_attention("tpu") == "xla"
    assert backend_attention("gpu") == backend_attention("cuda") == "cudnn"
    bf16 = jnp.zeros((1, 4, 2, 64), jnp.bfloat16)
    assert cudnn_accepts(bf16, bf16)
    assert not cudnn_accepts(bf16.astype(jnp.float32), bf16.astype(jnp.float32))  # 16-bit only
    assert not cudnn_accepts(bf16[..., :12], bf16[..., :12])  # head size not a multiple of 8
    with pytest.raises(ValueError, match="attention='flash'; choose one of"):
        UNetConfig(attention="flash")
    with pytest.raises(ValueError, match="attention='blocked' needs attention_block > 0"):
        UNetConfig(attention="blocked")
