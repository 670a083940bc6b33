"""Fast, deterministic random initialisation of NNX models, with parameters drawn on the host.

Running a model's own initialisers under `jax.jit` compiles every RNG op of the model (about 600
for an SD UNet: ~30 s of XLA on a CPU, per model size), and threefry then draws ~30 ns per
value on a CPU; eagerly it is ~90 s for an SD 2 UNet. Instead `init_module` builds the model
abstractly (`nnx.eval_shape`), reads each parameter's initialiser from its `init` metadata (an
`InitSpec`, attached by `initializer`, which the layer factories of `sdjax.models.layers` use) and
draws the values with NumPy: one SFC64 stream per parameter, keyed by the seed and the
parameter's path (so values do not depend on construction order, threads or sharding), one
parameter per core at a time; normals by Box–Muller in float32 (~6 ns per value on one core). Variables without an `InitSpec` take the values of the
model's own initialisation, jitted for only them (`initial_values`).

The distributions equal those of the jax initialisers the specs stand for; the values differ from
the jitted build's (other random streams).
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sdjax.models.tracing import fast_tracing

INIT_METADATA = "init"
TRUNCATION = 2.0  # truncated normals stay within ±2 standard deviations, as jax's
# The standard deviation of a unit normal truncated to ±2 (flax's variance_scaling constant).
TRUNCATED_STDDEV = 0.87962566103423978
CHUNK = 1 << 18  # values per Box–Muller chunk: temporaries stay in cache

NnxPath = tuple[str | int, ...]
# abstract state → a matching state of `jax.sharding.Sharding`s to place each variable with
# (e.g. `lambda s: sdjax.sharding.state_shardings(s, mesh)`).
Shardings = Callable[[nnx.State], nnx.State]


@dataclasses.dataclass(frozen=True)
class InitSpec:
    """An initialiser both jax and the host sampler understand.

    kinds: "zeros", "ones", "constant" (every value `value`), "normal" (× stddev),
    "lecun_normal" (truncated normal, variance 1/fan_in; fan_in = product of all axes but the
    last, as flax's `lecun_normal`), "uniform" (on [-limit, limit]).
    """

    kind: str
    stddev: float = 1.0
    limit: float = 0.0
    value: float = 0.0

    def __post_init__(self):
        if self.kind not in _JAX_INITIALIZERS:
            raise ValueError(
                f"unknown initialiser {self.kind!r}; known: {sorted(_JAX_INITIALIZERS)}"
            )


_JAX_INITIALIZERS: dict[str, Callable[[InitSpec], nnx.Initializer]] = {
    "zeros": lambda spec: nnx.initializers.zeros_init(),
    "ones": lambda spec: nnx.initializers.ones_init(),
    "constant": lambda spec: nnx.initializers.constant(spec.value),
    "normal": lambda spec: nnx.initializers.normal(spec.stddev),
    "lecun_normal": lambda spec: nnx.initializers.lecun_normal(),
    "uniform": lambda spec: symmetric_uniform(spec.limit),
}
ZEROS, ONES, LECUN_NORMAL = InitSpec("zeros"), InitSpec("ones"), InitSpec("lecun_normal")
# Parameters carry their logical axis names as metadata only: `sdjax.sharding` places them once a
# mesh exists, so flax must not shard them at creation (whatever `flax_always_shard_variable`).
EAGER_SHARDING = False


def symmetric_uniform(limit: float) -> nnx.Initializer:
    """Values uniform on [-limit, limit]."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = np.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def set_constant(param: nnx.Param, value: float) -> None:
    """Sets `param` to `value` everywhere, and its `InitSpec` (which `init_module` draws) too."""
    current = param.get_value()
    param.set_metadata(INIT_METADATA, InitSpec("constant", value=value))
    param.set_value(jnp.full(current.shape, value, current.dtype))


def torch_linear_init(module: nnx.Module, rngs: nnx.Rngs) -> None:
    """Gives every randomly initialised `nnx.Linear` in `module` PyTorch's default `nn.Linear`
    initialisation: kernel (kaiming-uniform, a = √5) and bias both uniform on ±1/√fan_in.

    Sets each parameter's `InitSpec` (which `init_module` draws) and its value; zero-initialised
    layers stay zero.
    """
    for _, layer in nnx.iter_graph(module):
        if not isinstance(layer, nnx.Linear):
            continue
        if layer.kernel.get_metadata().get(INIT_METADATA) != LECUN_NORMAL:
            continue
        spec = InitSpec("uniform", limit=1.0 / math.sqrt(layer.in_features))
        params = [layer.kernel] + ([layer.bias] if layer.bias is not None else [])
        for param in params:
            value = param.get_value()
            param.set_metadata(INIT_METADATA, spec)
            param.set_value(
                _JAX_INITIALIZERS["uniform"](spec)(rngs.params(), value.shape, value.dtype)
            )


def initializer(spec: InitSpec, axes: Sequence[str | None]) -> nnx.Initializer:
    """The jax initialiser of `spec`, with logical axis names and the spec as metadata."""
    return nnx.with_partitioning(
        _JAX_INITIALIZERS[spec.kind](spec), tuple(axes), init=spec, eager_sharding=EAGER_SHARDING
    )


def aligned_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array in a private anonymous memory map of its own.

    Page-aligned, so placing it on a CPU device shares its memory instead of copying it; in small
    pages, which the kernel hands out at once (NumPy asks for transparent huge pages for large
    arrays, and filling gigabytes of those stalls on memory compaction, twice as slow here).
    """
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1), flags=mmap.MAP_PRIVATE)
    return np.frombuffer(buffer, dtype, count).reshape(shape)


def fill_normals(rng: np.random.Generator, out: np.ndarray) -> None:
    """Fills the float32 vector `out` with standard normals (Box–Muller on 24-bit uniforms)."""
    half = (out.size + 1) // 2
    raw = rng.bit_generator.random_raw(half).view(np.uint32)  # 2·half 32-bit words
    uniform = (raw >> 8).astype(np.float32)
    uniform *= np.float32(2.0**-24)
    radius = np.log1p(-uniform[:half])  # 1 - u ∈ (0, 1]
    radius *= np.float32(-2.0)
    np.sqrt(radius, out=radius)
    angle = uniform[half:]
    angle *= np.float32(2 * np.pi)
    np.multiply(radius, np.cos(angle), out=out[:half])
    np.multiply(radius[: out.size - half], np.sin(angle[: out.size - half]), out=out[half:])


def normals(
    rng: np.random.Generator, size: int, *, stddev: float = 1.0, bound: float | None = None
) -> np.ndarray:
    """`size` normal float32 values of standard deviation `stddev` before truncation; with a
    `bound`, conditioned on |x| ≤ bound·stddev (values outside are redrawn). Works in
    cache-sized chunks."""
    out = aligned_empty((size,), np.float32)
    for start in range(0, size, CHUNK):
        block = out[start : start + CHUNK]
        fill_normals(rng, block)
        if bound is not None:
            outside = np.flatnonzero(np.abs(block) > bound)
            while outside.size:
                redrawn = np.empty(outside.size, np.float32)
                fill_normals(rng, redrawn)
                block[outside] = redrawn
                outside = outside[np.abs(redrawn) > bound]
        if stddev != 1.0:
            block *= np.float32(stddev)
    return out


def fan_in(shape: Sequence[int]) -> int:
    """Inputs per output unit of a kernel whose last axis is the output (flax's convention)."""
    if len(shape) < 2:
        raise ValueError(f"fan-in needs a kernel of rank ≥ 2, got shape {tuple(shape)}")
    return math.prod(shape[:-1])


def sample(spec: InitSpec, shape: Sequence[int], dtype, rng: np.random.Generator) -> np.ndarray:
    """Host values of one parameter drawn from `spec`."""
    size = math.prod(shape)
    if spec.kind in ("zeros", "ones", "constant"):
        values = aligned_empty(shape, dtype)
        values.fill({"zeros": 0.0, "ones": 1.0}.get(spec.kind, spec.value))
        return values
    if spec.kind == "uniform":
        values = rng.uniform(-spec.limit, spec.limit, size).astype(np.float32)
    elif spec.kind == "normal":
        values = normals(rng, size, stddev=spec.stddev)
    else:  # lecun_normal
        stddev = math.sqrt(1.0 / fan_in(shape)) / TRUNCATED_STDDEV
        values = normals(rng, size, stddev=stddev, bound=TRUNCATION)
    return values.reshape(shape).astype(dtype, copy=False)


def stream(seed: int, path: NnxPath) -> np.random.Generator:
    """The random stream of one parameter: a function of the seed and its path only."""
    key = zlib.crc32("/".join(str(p) for p in path).encode())
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, key])))


def initial_values(
    build: Callable[[nnx.Rngs], nnx.Module], paths: Sequence[NnxPath], seed: int
) -> dict[NnxPath, np.ndarray]:
    """Values of only the variables at `paths` from the model's own jitted initialisation
    (XLA drops the initialisation of everything else before compiling)."""
    if not paths:
        return {}
    wanted = set(paths)

    @jax.jit
    def init():
        state = nnx.state(build(nnx.Rngs(seed)))
        return {p: v.get_value() for p, v in nnx.to_flat_state(state) if p in wanted}

    with fast_tracing():
        values = init()
    # Copies: a view would keep the default device's buffer alive under the placed arrays.
    return {p: np.array(v) for p, v in values.items()}


def init_module(
    build: Callable[[nnx.Rngs], nnx.Module],
    seed: int = 0,
    shardings: Shardings | None = None,
    draw: Callable[[NnxPath, nnx.Variable], bool] | None = None,
    abstract: nnx.Module | None = None,
) -> nnx.Module:
    """`build(nnx.Rngs(seed))` with every `InitSpec` parameter drawn on the host (see module doc).

    shardings: where each variable goes (`Shardings`); default: the default device. Each host
    draws the full value and keeps its own shards.
    draw: which variables to draw (default: all); the others stay `jax.ShapeDtypeStruct`s, for
    parts loaded or restored afterwards. A drawn value does not depend on which others are drawn.
    abstract: `build`'s model as `nnx.eval_shape` makes it, when the caller has it already; it is
    left as it is (another thread may read it meanwhile).
    """
    if abstract is None:
        with fast_tracing():
            abstract = nnx.eval_shape(lambda: build(nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    placement = flat_placement(state, shardings)

    def place(path: NnxPath, host: np.ndarray) -> jax.Array:
        return place_host_value(host, placement.get(path))

    paths = [path for path, var in flat.items() if draw is None or draw(path, var)]
    for path, value in host_values(build, flat, paths, seed, transform=place).items():
        flat[path] = flat[path].replace(value)  # a new variable: `abstract` keeps its own
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def host_values(
    build: Callable[[nnx.Rngs], nnx.Module],
    flat: dict[NnxPath, nnx.Variable],
    paths: Sequence[NnxPath],
    seed: int,
    transform: Callable[[NnxPath, np.ndarray], Any] = lambda path, value: value,
) -> dict[NnxPath, Any]:
    """`transform(path, initial value)` of the variables at `paths` of an abstract model's flat
    state: `InitSpec` ones drawn on the host (one parameter per core at a time, largest first,
    NumPy releasing the GIL), the others from the model's own jitted initialisation."""
    specs = {p: flat[p].get_metadata().get(INIT_METADATA) for p in paths}
    fallback = initial_values(build, [p for p in paths if specs[p] is None], seed)

    def draw(path: NnxPath):
        if specs[path] is None:
            return transform(path, fallback[path])
        value = flat[path].get_value()
        host = sample(specs[path], value.shape, value.dtype, stream(seed, path))
        return transform(path, host)

    order = sorted(paths, key=lambda p: -math.prod(flat[p].get_value().shape))
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return dict(zip(order, pool.map(draw, order), strict=True))


def flat_placement(state: nnx.State, shardings: Shardings | None) -> dict[NnxPath, Any]:
    """{path: sharding} of `shardings(state)`; empty without `shardings` (the default device)."""
    return {} if shardings is None else dict(nnx.to_flat_state(shardings(state)))


def place_host_value(host: np.ndarray, sharding=None) -> jax.Array:
    """`host` on the default device, or split by `sharding`: each device receives only its shard."""
    if sharding is None:
        return jax.device_put(host)  # a CPU device adopts an aligned host buffer without a copy
    sharding = sharding.get_value() if isinstance(sharding, nnx.Variable) else sharding
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
