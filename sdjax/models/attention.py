"""Attention for the UNet: self-attention, the gated grounding adapter, cross-attention with maps.

Modules mirror diffusers' names (`Transformer2DModel.norm/proj_in/transformer_blocks/proj_out`,
`BasicTransformerBlock.norm1/attn1/fuser/norm2/attn2/norm3/ff`, `Attention.to_q/to_k/to_v/to_out`,
GLIGEN's `GatedSelfAttentionDense.linear/attn/ff/norm1/norm2/alpha_attn/alpha_dense`);
`ATTENTION_RENAMES` spells the few keys that differ (`to_out.0`, `ff.net.0.proj`, `ff.net.2`).

Logical axis names of parameters: q/k/v kernels ("embed", "heads"), output kernels
("heads", "embed"), feed-forward kernels ("embed", "mlp") in and ("mlp", "embed") out, the adapter
gates () (scalars); the rest as in `sdjax.models.layers`.

Attention logits and softmax are float32 whatever the compute dtype (diffusers'
`upcast_attention` is therefore always on): q, scaled by H^-1/2 in its dtype, and k multiply
with float32 accumulation, the softmax runs in float32 and the probabilities are cast to v's dtype.

The implementation is chosen per backend (`attention`, one of `ATTENTION_KINDS`; `auto` by
default): `einsum` writes attention out as two einsums and a softmax, which XLA:CPU runs 2.6x
faster forward and 1.4x faster backward than `jax.nn.dot_product_attention`'s XLA path at 1024
tokens (`docs/benchmarks.md`); `blocked` runs self-attention block by block when an
`attention_block` is set (`blocked_attention`), else as `einsum`; `xla` and `cudnn` are
`jax.nn.dot_product_attention`'s implementations (cuDNN's flash attention: GPUs, 16-bit inputs).
`auto` is `blocked` on CPUs, `xla` on TPUs and `cudnn` on GPUs where cuDNN takes the inputs
(`xla` otherwise). Asking for maps computes the probabilities explicitly (`einsum`) and also
returns their head average at the requested key positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.grounding import grounding_key_mask
from sdjax.models.init import EAGER_SHARDING, ZEROS
from sdjax.models.layers import DType, GroupNorm, LayerNorm, conv, linear, remat_call

QKV_AXES = ("embed", "heads")
OUT_AXES = ("heads", "embed")
MLP_OUT_AXES = ("mlp", "embed")
GATE_AXES = ()
ATTENTION_KINDS = ("auto", "einsum", "blocked", "xla", "cudnn")
GPU_PLATFORMS = ("gpu", "cuda", "rocm")
CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
CUDNN_MAX_HEAD_SIZE = 128
FF_MULT = 4
TRANSFORMER_NORM_EPS = 1e-6  # the GroupNorm in front of every Transformer2DModel
LAYER_NORM_EPS = 1e-5

ATTENTION_RENAMES = (
    (r"\.to_out\.(weight|bias)$", r".to_out.0.\1"),
    (r"\.ff\.proj_in\.", ".ff.net.0.proj."),
    (r"\.ff\.proj_out\.", ".ff.net.2."),
)


def scaled_queries(q: jax.Array) -> jax.Array:
    """q (..., H) × H^-1/2: the softmax scale applied to the queries, not to the T × S logits
    (XLA:CPU otherwise materialises the scale broadcast to the logits' shape)."""
    return q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)


def attention_probs(q: jax.Array, k: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Softmax attention probabilities (B, N, T, S) float32 of q (B, T, N, H) and k (B, S, N, H);
    a (B, T, S) bool `mask` keeps each query to its True keys (every row needs one)."""
    logits = jnp.einsum("btnh,bsnh->bnts", scaled_queries(q), k, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None], logits, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


def weighted_values(probs: jax.Array, v: jax.Array) -> jax.Array:
    """Attention output (B, T, N, H) of probabilities (B, N, T, S) over values v (B, S, N, H)."""
    return jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v)


def probs_at(probs: jax.Array, positions: jax.Array) -> jax.Array:
    """Head-averaged probabilities (B, T, K) at key positions (B, K) of probs (B, N, T, S)."""
    index = jnp.broadcast_to(positions[:, None, None, :], (*probs.shape[:3], positions.shape[-1]))
    return jnp.take_along_axis(probs, index, axis=-1).mean(axis=1)


def check_attention(kind: str, block: int) -> None:
    """Refuses an unknown implementation, and `blocked` without a block size."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention={kind!r}; choose one of {ATTENTION_KINDS}")
    if kind == "blocked" and block <= 0:
        raise ValueError(f"attention='blocked' needs attention_block > 0, got {block}")


def backend_attention(platform: str) -> str:
    """What `auto` stands for on a backend (`jax.default_backend()` names): `cudnn` on GPUs
    (where `cudnn_accepts` the inputs), `xla` on TPUs, `blocked` on CPUs."""
    if platform in GPU_PLATFORMS:
        return "cudnn"
    return "xla" if platform == "tpu" else "blocked"


def cudnn_accepts(q: jax.Array, k: jax.Array) -> bool:
    """Whether cuDNN's flash attention takes these inputs (16-bit, head size a multiple of 8 up
    to `CUDNN_MAX_HEAD_SIZE`)."""
    head = q.shape[-1]
    return (
        q.dtype in CUDNN_DTYPES
        and k.dtype == q.dtype
        and head % 8 == 0
        and head <= CUDNN_MAX_HEAD_SIZE
    )


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    block: int = 0,
    kind: str = "auto",
    mask: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention of q (B, T, N, H) over k, v (B, S, N, H) by the implementation `kind`.

    `blocked` with `block` > 0 and more than `block` queries or keys runs block by block
    (`blocked_attention`): never more than block × block logits per head exist, instead of T × S
    (335 MB per layer for SD 2's 4096 tokens, float32). A (B, T, S) bool `mask` (see
    `attention_probs`) is applied by `jax.nn.dot_product_attention` on `xla` and `cudnn` (which
    picks the implementation that takes it) and by `einsum` otherwise (no blocks).
    """
    if kind == "auto":
        kind = backend_attention(jax.default_backend())
        if kind == "cudnn" and not cudnn_accepts(q, k):
            kind = "xla"
    if kind in ("xla", "cudnn"):
        if mask is not None:
            kind, mask = None, mask[:, None]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=kind).astype(v.dtype)
    if kind == "einsum" or not block or mask is not None or max(q.shape[1], k.shape[1]) <= block:
        return weighted_values(attention_probs(q, k, mask), v)
    return blocked_attention(q, k, v, block)


def _blocks(x: jax.Array, block: int) -> jax.Array:
    """(B, L, ...) → (ceil(L / block), B, block, ...), the last block zero-padded."""
    count = -(-x.shape[1] // block)
    pad = [(0, 0), (0, count * block - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad).reshape(x.shape[0], count, block, *x.shape[2:]).swapaxes(0, 1)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, block: int) -> jax.Array:
    """`attend` by blocks of `block` queries and keys, with a running softmax over key blocks.

    Query blocks go one after another (`lax.map`), each recomputed in the backward pass; within
    one, a scan over key blocks keeps the running maximum, normaliser and weighted sum of the
    values (float32), rescaled whenever the maximum grows. Padded keys are masked out. XLA:CPU runs
    SD 2's 4096-token self-attention 3x faster so, its logits staying in cache.
    """
    tokens, keys, heads, head_size = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    key_blocks, value_blocks = _blocks(k, block), _blocks(v, block)
    key_valid = (jnp.arange(key_blocks.shape[0] * block) < keys).reshape(-1, block)

    def query_block(queries: jax.Array) -> jax.Array:
        def step(carry, inputs):
            top, total, summed = carry
            keys_, values, valid = inputs
            logits = jnp.einsum(
                "btnh,bsnh->bnts", queries, keys_, preferred_element_type=jnp.float32
            )
            logits = jnp.where(valid, logits, -jnp.inf)
            # The result does not depend on the running maximum: no gradient through it.
            new_top = jax.lax.stop_gradient(jnp.maximum(top, logits.max(axis=-1)))
            weights = jnp.exp(logits - new_top[..., None])
            rescale = jnp.exp(top - new_top)
            total = total * rescale + weights.sum(axis=-1)
            update = jnp.einsum(
                "bnts,bsnh->bnth",
                weights.astype(v.dtype),
                values,
                preferred_element_type=jnp.float32,
            )
            return (new_top, total, summed * rescale[..., None] + update), None

        rows = (queries.shape[0], heads, block)
        start = (
            jnp.full(rows, -jnp.inf, jnp.float32),
            jnp.zeros(rows, jnp.float32),
            jnp.zeros((*rows, head_size), jnp.float32),
        )
        (_, total, summed), _ = jax.lax.scan(step, start, (key_blocks, value_blocks, key_valid))
        return (summed / total[..., None]).swapaxes(1, 2).astype(v.dtype)

    out = jax.lax.map(jax.checkpoint(query_block), _blocks(scaled_queries(q), block))
    return out.swapaxes(0, 1).reshape(q.shape[0], -1, heads, head_size)[:, :tokens]


class Attention(nnx.Module):
    """Multi-head attention: `to_q`, `to_k`, `to_v` (no bias) and `to_out`.

    `attention_block`, `attention`: the block size and the implementation (see `attend`).
    """

    def __init__(
        self,
        query_dim: int,
        *,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        attention_block: int = 0,
        attention: str = "auto",
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_attention(attention, attention_block)
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.attention_block = attention_block
        self.attention = attention

        def proj(n_in: int, n_out: int, axes: tuple[str, str], bias: bool) -> nnx.Linear:
            return linear(n_in, n_out, use_bias=bias, axes=axes, dtype=dtype, rngs=rngs)

        self.to_q = proj(query_dim, inner, QKV_AXES, False)
        self.to_k = proj(context_dim, inner, QKV_AXES, False)
        self.to_v = proj(context_dim, inner, QKV_AXES, False)
        self.to_out = proj(inner, query_dim, OUT_AXES, True)

    def _qkv(self, x: jax.Array, context: jax.Array | None):
        context = x if context is None else context

        def split(t: jax.Array) -> jax.Array:
            return t.reshape(*t.shape[:2], self.heads, -1)

        return split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))

    def _out(self, o: jax.Array) -> jax.Array:
        return self.to_out(o.reshape(*o.shape[:2], -1))

    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        """Attention of x (B, T, D) over context (B, S, C) (x itself when None), each query kept
        to its True keys of a (B, T, S) bool `mask` when given."""
        q, k, v = self._qkv(x, context)
        return self._out(attend(q, k, v, self.attention_block, self.attention, mask))

    def with_maps(
        self, x: jax.Array, context: jax.Array | None, positions: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Attention, plus its head-averaged probabilities at `positions`."""
        q, k, v = self._qkv(x, context)
        probs = attention_probs(q, k)
        return self._out(weighted_values(probs, v)), probs_at(probs, positions)


class FeedForward(nnx.Module):
    """GEGLU feed-forward: `proj_in` to 2×inner, value × GELU(gate), `proj_out` back."""

    def __init__(self, dim: int, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        inner = dim * FF_MULT
        self.proj_in = linear(dim, 2 * inner, dtype=dtype, rngs=rngs)
        self.proj_out = linear(inner, dim, axes=MLP_OUT_AXES, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """The value and gate halves of `proj_in` as two products: splitting one product's
        (tokens, 2 x inner) output makes XLA:CPU copy its gradient back together."""
        proj = self.proj_in
        x, kernel, bias = proj.promote_dtype(
            (x, proj.kernel[...], proj.bias[...]), dtype=proj.dtype
        )
        inner = kernel.shape[-1] // 2
        value = x @ kernel[:, :inner] + bias[:inner]
        gate = x @ kernel[:, inner:] + bias[inner:]
        return self.proj_out(value * jax.nn.gelu(gate, approximate=False))


def adapter_mask(grounding_mask: jax.Array) -> jax.Array:
    """(B, N, N + M) bool mask of the adapter's visual queries over its [visual; grounding] keys
    from the visual tokens' (B, N, M) grounding mask: visual keys always, grounding keys where
    allowed."""
    b, n, _ = grounding_mask.shape
    return jnp.concatenate([jnp.ones((b, n, n), bool), grounding_mask], axis=-1)


def _gate(alpha: nnx.Param, scale: float | jax.Array, dtype: jnp.dtype) -> jax.Array:
    return (scale * jnp.tanh(alpha[...])).astype(dtype)


class GatedSelfAttentionDense(nnx.Module):
    """The grounding adapter (GLIGEN's gated self-attention), gates `alpha_*` zero at init.

    x ← x + β·tanh(α_attn)·SelfAttn(LN(concat[x, linear(g)]))[:, :N]
    x ← x + β·tanh(α_dense)·FF(LN(x))

    With a `grounding_mask` (B, N, M) bool, each visual token attends to every visual token and
    only to the grounding tokens the mask allows it (`grounding.grounding_key_mask`: those of the
    subjects whose box covers it).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        *,
        heads: int,
        dim_head: int,
        attention_block: int = 0,
        attention: str = "auto",
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.linear = linear(context_dim, query_dim, dtype=dtype, rngs=rngs)
        self.attn = Attention(
            query_dim,
            heads=heads,
            dim_head=dim_head,
            attention_block=attention_block,
            attention=attention,
            dtype=dtype,
            rngs=rngs,
        )
        self.ff = FeedForward(query_dim, dtype=dtype, rngs=rngs)
        self.norm1 = LayerNorm(query_dim, LAYER_NORM_EPS, rngs=rngs)
        self.norm2 = LayerNorm(query_dim, LAYER_NORM_EPS, rngs=rngs)
        self.alpha_attn = nnx.Param(
            jnp.zeros((), jnp.float32),
            out_sharding=GATE_AXES,
            init=ZEROS,
            eager_sharding=EAGER_SHARDING,
        )
        self.alpha_dense = nnx.Param(
            jnp.zeros((), jnp.float32),
            out_sharding=GATE_AXES,
            init=ZEROS,
            eager_sharding=EAGER_SHARDING,
        )

    def __call__(
        self,
        x: jax.Array,
        grounding: jax.Array,
        scale: float | jax.Array = 1.0,
        grounding_mask: jax.Array | None = None,
    ) -> jax.Array:
        objs = self.linear(grounding).astype(x.dtype)
        mask = None if grounding_mask is None else adapter_mask(grounding_mask)
        tokens = self.norm1(jnp.concatenate([x, objs], axis=1))
        # Only the visual rows are kept: the grounding tokens are keys and values, not queries.
        attended = self.attn(tokens[:, : x.shape[1]], tokens, mask=mask)
        x = x + _gate(self.alpha_attn, scale, x.dtype) * attended
        return x + _gate(self.alpha_dense, scale, x.dtype) * self.ff(self.norm2(x))


class BasicTransformerBlock(nnx.Module):
    """Self-attention → grounding adapter (`fuser`) → cross-attention → feed-forward, pre-norm.

    `attention_block` (see `attend`) applies to the two self-attentions, whose T × T probabilities
    are the large ones; cross-attention has 77 keys.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        dim_head: int,
        context_dim: int,
        grounding_dim: int | None,
        attention_block: int = 0,
        attention: str = "auto",
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        heads_args = dict(
            heads=heads,
            dim_head=dim_head,
            attention_block=attention_block,
            attention=attention,
            dtype=dtype,
        )
        self.norm1 = LayerNorm(dim, LAYER_NORM_EPS, rngs=rngs)
        self.attn1 = Attention(dim, **heads_args, rngs=rngs)
        self.fuser = (
            GatedSelfAttentionDense(dim, grounding_dim, **heads_args, rngs=rngs)
            if grounding_dim is not None
            else None
        )
        self.norm2 = LayerNorm(dim, LAYER_NORM_EPS, rngs=rngs)
        self.attn2 = Attention(
            dim,
            heads=heads,
            dim_head=dim_head,
            context_dim=context_dim,
            attention="einsum" if attention == "blocked" else attention,  # 77 keys: no blocks
            dtype=dtype,
            rngs=rngs,
        )
        self.norm3 = LayerNorm(dim, LAYER_NORM_EPS, rngs=rngs)
        self.ff = FeedForward(dim, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array,
        grounding: jax.Array | None = None,
        adapter_scale: float | jax.Array = 1.0,
        positions: jax.Array | None = None,
        grounding_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """Returns the new tokens and, when `positions` is given, the cross-attention map."""
        x = x + self.attn1(self.norm1(x))
        if grounding is not None and self.fuser is not None:
            x = self.fuser(x, grounding, adapter_scale, grounding_mask)
        if positions is None:
            attended, maps = self.attn2(self.norm2(x), context), None
        else:
            attended, maps = self.attn2.with_maps(self.norm2(x), context, positions)
        x = x + attended
        return x + self.ff(self.norm3(x)), maps


class Transformer2DModel(nnx.Module):
    """GroupNorm → `proj_in` → transformer blocks over the H·W tokens → `proj_out`, residual.

    The projections are 1×1 convolutions (SD 1.x) or linear layers (`use_linear_projection`,
    SD 2.x); on NHWC both act on the channel axis.
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        context_dim: int,
        num_layers: int = 1,
        groups: int = 32,
        use_linear_projection: bool = False,
        grounding_dim: int | None = None,
        remat: bool = False,
        attention_block: int = 0,
        attention: str = "auto",
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} attention heads")
        self.remat = remat
        self.norm = GroupNorm(channels, groups, TRANSFORMER_NORM_EPS, rngs=rngs)

        def proj() -> nnx.Module:
            if use_linear_projection:
                return linear(channels, channels, dtype=dtype, rngs=rngs)
            return conv(channels, channels, 1, dtype=dtype, rngs=rngs)

        self.proj_in = proj()
        self.transformer_blocks = nnx.List(
            [
                BasicTransformerBlock(
                    channels,
                    heads=heads,
                    dim_head=channels // heads,
                    context_dim=context_dim,
                    grounding_dim=grounding_dim,
                    attention_block=attention_block,
                    attention=attention,
                    dtype=dtype,
                    rngs=rngs,
                )
                for _ in range(num_layers)
            ]
        )
        self.proj_out = proj()

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array,
        grounding: jax.Array | None = None,
        adapter_scale: float | jax.Array = 1.0,
        positions: jax.Array | None = None,
        grounding_layout: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, list[jax.Array]]:
        """Returns the new feature map (B, H, W, C) and one (B, H, W, K) map per block if asked.

        grounding_layout: the grounding tokens' boxes (B, M, 4) and valid (B, M), which keep each
        cell's adapter to the tokens whose box covers it (None: every token, as SPEC).
        """
        batch, height, width, channels = x.shape
        h = self.proj_in(self.norm(x)).reshape(batch, height * width, channels)
        g_mask = None
        if grounding_layout is not None and grounding is not None:
            g_mask = grounding_key_mask(grounding_layout, height, width)
        maps = []
        for block in self.transformer_blocks:
            h, m = remat_call(
                self.remat, block, h, context, grounding, adapter_scale, positions, g_mask
            )
            if m is not None:
                maps.append(m.reshape(batch, height, width, -1))
        return x + self.proj_out(h.reshape(batch, height, width, channels)), maps
