"""Generic PyTorch-checkpoint ↔ NNX parameter conversion.

Our modules mirror the attribute names of diffusers/transformers, so the PyTorch key of a parameter
is its NNX path joined with dots, with `kernel`/`scale`/`embedding` spelled `weight`. Per-model
`renames` (regex, replacement) cover the few places where names differ. Layouts: linear kernels
are transposed, conv kernels go OIHW → HWIO.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from sdjax.models.init import host_values
from sdjax.models.tracing import fast_tracing

NnxPath = tuple[str | int, ...]
Resizer = Callable[[np.ndarray, tuple[int, ...], np.ndarray], np.ndarray]

logger = logging.getLogger(__name__)

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TRANSPOSE_TILE = 128  # 128 x 128 float32 tiles: source and destination stay in L1/L2


class WeightLoadError(ValueError):
    """A checkpoint does not match the module: every offending key is listed."""


def read_safetensors_folder(folder: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a folder's safetensors files (sharded checkpoints included); refuses pickles."""
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
        tensors.update(load_file(str(f)))
    return tensors


def read_config(folder: str | Path) -> dict:
    """The folder's `config.json`."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {folder}")
    return json.loads(path.read_text())


def torch_key(path: NnxPath, renames: Sequence[tuple[str, str]] = ()) -> str:
    """The PyTorch state-dict key of an NNX parameter path."""
    *parents, leaf = (str(p) for p in path)
    key = ".".join([*parents, _LEAF_NAMES.get(leaf, leaf)])
    for pattern, repl in renames:
        key = re.sub(pattern, repl, key)
    return key


def transposed(matrix: np.ndarray) -> np.ndarray:
    """The contiguous transpose of a 2D array, copied tile by tile: NumPy's own copy of a large
    `.T` misses the cache on nearly every element (about 10x slower for SD-sized kernels)."""
    rows, cols = matrix.shape
    out = np.empty((cols, rows), matrix.dtype)
    for i in range(0, rows, TRANSPOSE_TILE):
        for j in range(0, cols, TRANSPOSE_TILE):
            out[j : j + TRANSPOSE_TILE, i : i + TRANSPOSE_TILE] = matrix[
                i : i + TRANSPOSE_TILE, j : j + TRANSPOSE_TILE
            ].T
    return out


def to_nnx_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    """A PyTorch tensor in our layout, contiguous: linear kernels transposed, conv kernels
    OIHW → HWIO."""
    if leaf == "kernel" and array.ndim == 2:
        return transposed(array)
    if leaf == "kernel" and array.ndim == 4:
        o, i, h, w = array.shape
        # (O, I·H·W) → (I, H·W, O) by tiles, then (H·W, I, O): whole rows of O move together.
        flipped = transposed(array.reshape(o, i * h * w)).reshape(i, h * w, o)
        return np.ascontiguousarray(flipped.transpose(1, 0, 2)).reshape(h, w, i, o)
    return array


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
) -> nnx.Module:
    """Builds `build(rngs)` abstractly and fills its parameters from `tensors` (a state dict).

    fresh(key): parameters that are new to sdjax (adapters, grounding net) keep their initial value.
    resize[key](our_layout_array, target_shape, initial_value): adapts a tensor whose shape grew
      (e.g. `conv_in` from 4 to 5 input channels).
    ignore: regexes of checkpoint keys that are not parameters (buffers such as `position_ids`).
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
    values: dict[NnxPath, np.ndarray] = {}
    for path, var in flat.items():
        key, leaf, shape = keys[path], str(path[-1]), tuple(var.get_value().shape)
        if fresh(key):
            values[path] = initial[path]
            continue
        if key not in tensors:
            problems.append(f"missing {key}: expected shape {_torch_shape(leaf, shape)}")
            continue
        array = to_nnx_layout(leaf, np.asarray(tensors[key]))
        if key in resize:
            array = resize[key](array, shape, np.asarray(initial[path]))
        if tuple(array.shape) != shape:
            problems.append(
                f"wrong shape for {key}: checkpoint {tuple(tensors[key].shape)}, "
                f"model expects {_torch_shape(leaf, shape)}"
            )
            continue
        values[path] = array
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
        sum(int(np.prod(v.shape)) for p, v in values.items() if not fresh(keys[p])),
        len(fresh_keys),
        f" ({_summarise(fresh_keys)})" if fresh_keys else "",
        f"; resized: {', '.join(k for k in resize if k in used)}" if resize else "",
    )
    for path, var in flat.items():
        # A contiguous copy first: device_put of a transposed (strided) view is many times slower.
        host = np.asarray(values[path], dtype=var.get_value().dtype, order="C")
        var.set_value(jax.device_put(host))
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
