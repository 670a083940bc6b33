"""Building blocks shared by every model: dtype policy, linear/conv factories, float32 norms.

Parameters are float32 and carry logical axis names (see `sdjax.sharding`):
  linear kernels ("embed", "mlp"), conv kernels (None, None, "conv_in", "conv_out"),
  embedding tables ("vocab", "embed"), norm scales and biases ("norm",).
Norms and softmax always compute in float32, whatever the compute dtype. Initialisers carry an
`InitSpec` (`sdjax.models.init`) so `init_module` can draw them on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sdjax.models.init import LECUN_NORMAL, ONES, ZEROS, InitSpec, initializer

DType = jnp.dtype | type

LINEAR_AXES = ("embed", "mlp")
CONV_AXES = (None, None, "conv_in", "conv_out")
EMBED_AXES = ("vocab", "embed")
NORM_AXES = ("norm",)
EMBEDDING_INIT = InitSpec("normal", stddev=0.02)


def linear(
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    dtype: DType = jnp.float32,
    use_bias: bool = True,
    zero_init: bool = False,
    axes: Sequence[str | None] = LINEAR_AXES,
) -> nnx.Linear:
    """A dense layer with float32 parameters and logical axis names."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=initializer(ZEROS if zero_init else LECUN_NORMAL, axes),
        bias_init=initializer(ZEROS, (axes[-1],)),
        rngs=rngs,
    )


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    rngs: nnx.Rngs,
    dtype: DType = jnp.float32,
    stride: int = 1,
    padding: int | None = None,
    zero_init: bool = False,
) -> nnx.Conv:
    """A 2D NHWC convolution with symmetric padding (`kernel_size // 2` by default), as in PyTorch."""
    pad = kernel_size // 2 if padding is None else padding
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=initializer(ZEROS if zero_init else LECUN_NORMAL, CONV_AXES),
        bias_init=initializer(ZEROS, ("conv_out",)),
        rngs=rngs,
    )


def embedding(num: int, features: int, *, rngs: nnx.Rngs, dtype: DType = jnp.float32) -> nnx.Embed:
    """A lookup table (vocabulary or positions) with float32 parameters."""
    return nnx.Embed(
        num,
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        embedding_init=initializer(EMBEDDING_INIT, EMBED_AXES),
        rngs=rngs,
    )


class GroupNorm(nnx.GroupNorm):
    """GroupNorm computed in float32; returns the input's dtype."""

    def __init__(self, num_features: int, num_groups: int, epsilon: float, *, rngs: nnx.Rngs):
        super().__init__(
            num_features,
            num_groups=num_groups,
            epsilon=epsilon,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            scale_init=initializer(ONES, NORM_AXES),
            bias_init=initializer(ZEROS, NORM_AXES),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
        return super().__call__(x.astype(jnp.float32), *args, **kwargs).astype(x.dtype)


class LayerNorm(nnx.LayerNorm):
    """LayerNorm computed in float32; returns the input's dtype."""

    def __init__(self, num_features: int, epsilon: float = 1e-5, *, rngs: nnx.Rngs):
        super().__init__(
            num_features,
            epsilon=epsilon,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            scale_init=initializer(ONES, NORM_AXES),
            bias_init=initializer(ZEROS, NORM_AXES),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
        return super().__call__(x.astype(jnp.float32), *args, **kwargs).astype(x.dtype)


def activation(name: str):
    """The activation function named as in diffusers/transformers configs."""
    table = {
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(table)}")
    return table[name]


def remat_call(remat: bool, block: nnx.Module, *args: Any, **static: Any) -> Any:
    """`block(*args, **static)`, rematerialised in the backward pass if `remat`.

    The block runs as a pure function of its split state under `jax.checkpoint` (`static` are
    Python values closed over), so it may be called at any trace level, e.g. a frozen encoder
    merged outside `jax.grad`.
    """
    if not remat:
        return block(*args, **static)
    graphdef, state = nnx.split(block)

    def run(state: nnx.State, *inputs: Any) -> Any:
        return nnx.merge(graphdef, state)(*inputs, **static)

    return jax.checkpoint(run)(state, *args)
