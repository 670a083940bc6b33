"""Generic PyTorch-checkpoint ↔ NNX parameter conversion.

Our modules mirror the attribute names of diffusers/transformers, so the PyTorch key of a parameter
is its NNX path joined with dots, with `kernel`/`scale`/`embedding` spelled `weight`. Per-model
`renames` (regex, replacement) cover the few places where names differ. Layouts: linear kernels
are transposed, conv kernels go OIHW → HWIO.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from sdjax.models.init import (
    Shardings,
    aligned_empty,
    flat_placement,
    host_values,
    place_host_value,
)
from sdjax.models.tracing import fast_tracing
from sdjax.weights.mapped import map_safetensors

NnxPath = tuple[str | int, ...]
Resizer = Callable[[np.ndarray, tuple[int, ...], np.ndarray], np.ndarray]

logger = logging.getLogger(__name__)

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TRANSPOSE_TILE = 128  # 128 x 128 float32 tiles: source and destination stay in L1/L2


class WeightLoadError(ValueError):
    """A checkpoint does not match the module: every offending key is listed."""


def read_safetensors_folder(folder: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a folder's safetensors files (sharded checkpoints included), as read-only
    views of the mapped files (`sdjax.weights.mapped`); refuses pickles."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise WeightLoadError(
                f"{folder} holds only pickled weights ({', '.join(pickles)}); sdjax loads "
                "safetensors only. Convert them with `save_pretrained(..., safe_serialization=True)`."
            )
        raise WeightLoadError(f"no *.safetensors file in {folder}")
    index = [f for f in folder.glob("*.safetensors.index.json")]
    if index:
        names = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        files = [folder / n for n in names]
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(map_safetensors(f))
    return tensors


def read_config(folder: str | Path) -> dict:
    """The folder's `config.json`."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {folder}")
    return json.loads(path.read_text())


def expect_model_type(config: dict, folder: str | Path, expected: Sequence[str]) -> None:
    """A `WeightLoadError` naming the folder and both types unless `config`'s `model_type` is one
    of `expected` (a folder of another model would otherwise fail key by key)."""
    found = config.get("model_type")
    if found not in expected:
        raise WeightLoadError(
            f"{folder} holds a {found!r} model (config.json model_type); expected "
            + " or ".join(repr(e) for e in expected)
        )


def torch_key(path: NnxPath, renames: Sequence[tuple[str, str]] = ()) -> str:
    """The PyTorch state-dict key of an NNX parameter path."""
    *parents, leaf = (str(p) for p in path)
    key = ".".join([*parents, _LEAF_NAMES.get(leaf, leaf)])
    for pattern, repl in renames:
        key = re.sub(pattern, repl, key)
    return key


def to_hwio(kernel: np.ndarray, dtype: Any = None) -> np.ndarray:
    """A PyTorch kernel (O, I, *taps) as a new array (*taps, I, O) of `dtype` (default: its own),
    from `aligned_empty`: linear (O, I) → (I, O), conv OIHW → HWIO.

    NumPy's own copy of such a transpose misses the cache on nearly every element (about 10x
    slower for SD-sized kernels). Here each band of `TRANSPOSE_TILE` output channels is read
    whole (one sequential read of a memory-mapped file), split by tap, and written out in
    square tiles that stay in cache.
    """
    o, i, *taps = kernel.shape
    num_taps = math.prod(taps)
    out = aligned_empty((num_taps, i, o), dtype or kernel.dtype)
    for o0 in range(0, o, TRANSPOSE_TILE):
        band = np.asarray(kernel[o0 : o0 + TRANSPOSE_TILE]).reshape(-1, i, num_taps)
        by_tap = np.ascontiguousarray(band.transpose(2, 0, 1))  # (taps, band, I)
        for tap in range(num_taps):
            for i0 in range(0, i, TRANSPOSE_TILE):
                tile = by_tap[tap, :, i0 : i0 + TRANSPOSE_TILE]
                out[tap, i0 : i0 + TRANSPOSE_TILE, o0 : o0 + TRANSPOSE_TILE] = tile.T
    return out.reshape(*taps, i, o)


def to_nnx_layout(leaf: str, array: np.ndarray, dtype: Any = None) -> np.ndarray:
    """A PyTorch tensor in our layout and `dtype` (default: its own), as a new array from
    `aligned_empty`: linear kernels transposed, conv kernels OIHW → HWIO."""
    if leaf == "kernel" and array.ndim in (2, 4):
        return to_hwio(array, dtype)
    out = aligned_empty(array.shape, dtype or array.dtype)
    np.copyto(out, array)
    return out


def to_torch_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    """Inverse of `to_nnx_layout`."""
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    return array


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(to_torch_layout(leaf, np.empty(shape, dtype=np.bool_)).shape)


def load_module(
    build: Callable[[nnx.Rngs], nnx.Module],
    tensors: Mapping[str, np.ndarray],
    *,
    renames: Sequence[tuple[str, str]] = (),
    fresh: Callable[[str], bool] = lambda key: False,
    resize: Mapping[str, Resizer] | None = None,
    ignore: Sequence[str] = (),
    seed: int = 0,
    shardings: Shardings | None = None,
) -> nnx.Module:
    """Builds `build(rngs)` abstractly and fills its parameters from `tensors` (a state dict).

    fresh(key): parameters that are new to sdjax (adapters, grounding net) keep their initial value.
    resize[key](our_layout_array, target_shape, initial_value): adapts a tensor whose shape grew
      (e.g. `conv_in` from 4 to 5 input channels).
    ignore: regexes of checkpoint keys that are not parameters (buffers such as `position_ids`).
    shardings: where each parameter goes (`sdjax.models.init.Shardings`): each device receives
      only its shards, straight from the host; default: the default device.
    Anything else that does not match is an error naming every key and both shapes.
    """
    resize = resize or {}
    with fast_tracing():
        abstract = nnx.eval_shape(lambda: build(nnx.Rngs(seed)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    flat = dict(nnx.to_flat_state(params))
    keys = {path: torch_key(path, renames) for path in flat}

    need_init = [p for p, k in keys.items() if fresh(k) or k in resize]
    initial = host_values(build, flat, need_init, seed)

    problems: list[str] = []
    values: dict[NnxPath, np.ndarray] = {}  # fresh and resized parameters, in our layout
    for path, var in flat.items():
        key, leaf, shape = keys[path], str(path[-1]), tuple(var.get_value().shape)
        if fresh(key):
            values[path] = initial[path]
        elif key not in tensors:
            problems.append(f"missing {key}: expected shape {_torch_shape(leaf, shape)}")
        elif key in resize:
            array = resize[key](to_nnx_layout(leaf, tensors[key]), shape, initial[path])
            if tuple(array.shape) != shape:
                problems.append(
                    f"wrong shape for {key}: checkpoint {tuple(tensors[key].shape)} cannot be "
                    f"resized to the model's {_torch_shape(leaf, shape)}"
                )
            values[path] = array
        elif tuple(tensors[key].shape) != _torch_shape(leaf, shape):
            problems.append(
                f"wrong shape for {key}: checkpoint {tuple(tensors[key].shape)}, "
                f"model expects {_torch_shape(leaf, shape)}"
            )
    used = set(keys.values())
    ignored = [re.compile(p) for p in ignore]
    for key in sorted(tensors):
        if key not in used and not any(p.search(key) for p in ignored):
            problems.append(f"unexpected {key}: shape {tuple(tensors[key].shape)}")
    if problems:
        raise WeightLoadError(
            f"{len(problems)} checkpoint mismatch(es):\n  " + "\n  ".join(problems)
        )

    fresh_keys = sorted(keys[p] for p in flat if fresh(keys[p]))
    logger.info(
        "%s: %d tensors loaded (%d parameters), %d kept at their initial value%s%s",
        type(abstract).__name__,
        len(flat) - len(fresh_keys),
        sum(tensors[keys[p]].size for p in flat if not fresh(keys[p])),
        len(fresh_keys),
        f" ({_summarise(fresh_keys)})" if fresh_keys else "",
        f"; resized: {', '.join(k for k in resize if k in used)}" if resize else "",
    )

    placement = flat_placement(params, shardings)

    def place(path: NnxPath) -> jax.Array:
        dtype = flat[path].get_value().dtype
        if path in values:
            host = np.asarray(values[path], dtype, order="C")  # 0-d stays 0-d
        else:
            host = to_nnx_layout(str(path[-1]), tensors[keys[path]], dtype)
        return place_host_value(host, placement.get(path))

    # Layout copies release the GIL: one parameter per core at a time, largest first.
    order = sorted(flat, key=lambda p: -math.prod(flat[p].get_value().shape))
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        placed = dict(zip(order, pool.map(place, order), strict=True))
    for path, var in flat.items():
        var.set_value(placed[path])
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def _summarise(keys: Sequence[str], limit: int = 4) -> str:
    """A short list of parameter names, grouping the numbered copies of one layer."""
    groups = sorted({re.sub(r"\.\d+\.", ".N.", k) for k in keys})
    more = f", … {len(groups) - limit} more" if len(groups) > limit else ""
    return ", ".join(groups[:limit]) + more


def export_state(
    module: nnx.Module, renames: Sequence[tuple[str, str]] = ()
) -> dict[str, np.ndarray]:
    """The module's parameters as a PyTorch-layout state dict (for safetensors export)."""
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return {
        torch_key(path, renames): np.array(
            to_torch_layout(str(path[-1]), np.asarray(v.get_value())), order="C"
        )
        for path, v in flat
    }
