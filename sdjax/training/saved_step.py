"""The compiled training step kept in the run directory, so that a resume loads it instead of
tracing, lowering and compiling the step again.

The persistent compilation cache still traces and lowers the step to find its entry (the
program's text is the key); a saved step is found by a fingerprint of everything the program is
made from: sdjax's own source files, the whole config, the versions of jax, jaxlib, flax and
optax, the XLA flags and the devices of the mesh. Any change to one of them misses, and the step
is compiled as usual. A loaded step is used only when its inputs' tree, shapes, dtypes and
shardings are those of the built state (`differences`); a file that cannot be read is reported
and compiled over, never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import pickle
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from jax.experimental import serialize_executable
from ml_collections import ConfigDict

import sdjax

logger = logging.getLogger(__name__)

SUFFIX = ".xla"
PACKAGES = ("jax", "jaxlib", "flax", "optax")
ENVIRONMENT = ("XLA_FLAGS", "LIBTPU_INIT_ARGS")
# jax's monitoring events: a program handed to XLA (compiled, or read from the persistent cache),
# and one read from the persistent cache.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
COMPRESSION_LEVEL = 1  # zlib: fast; executables compress well (sizes in docs/benchmarks.md)


def source_digest(package: Path = Path(sdjax.__file__).parent) -> str:
    """SHA-256 over every Python file of the sdjax package, by relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fingerprint(config: ConfigDict, mesh: jax.sharding.Mesh) -> str:
    """What the step's program is made from, hashed: a changed part names another file."""
    parts = {
        "source": source_digest(),
        "config": config.to_json_best_effort(sort_keys=True),
        "packages": {name: importlib.metadata.version(name) for name in PACKAGES},
        "environment": {name: os.environ.get(name, "") for name in ENVIRONMENT},
        "mesh": (dict(mesh.shape), [(d.platform, d.device_kind, d.id) for d in mesh.devices.flat]),
        "processes": jax.process_count(),
    }
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def compile_keepable(compile_fn: Callable[[], jax.stages.Compiled]) -> jax.stages.Compiled | None:
    """Runs `compile_fn`; returns its program when XLA compiled it in this call, None when it
    was read from the persistent cache or reused from memory: XLA:CPU drops the kernels of a
    deserialised program when it serialises it again, so only a freshly compiled one is kept."""
    thread, seen = threading.get_ident(), set()

    def listen(event: str, *args, **kwargs) -> None:
        if threading.get_ident() == thread:
            seen.add(event)

    jax.monitoring.register_event_listener(listen)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        compiled = compile_fn()
    finally:
        jax.monitoring.unregister_event_listener(listen)
        jax.monitoring.unregister_event_duration_listener(listen)
    return compiled if BACKEND_COMPILE_EVENT in seen and CACHE_HIT_EVENT not in seen else None


def path_of(directory: Path, key: str) -> Path:
    return directory / f"step-{key}{SUFFIX}"


def save(directory: Path, key: str, compiled: jax.stages.Compiled) -> Path:
    """Writes `compiled` under `key` (atomically) and removes the steps saved under other keys."""
    directory.mkdir(parents=True, exist_ok=True)
    target = path_of(directory, key)
    payload = zlib.compress(
        pickle.dumps(serialize_executable.serialize(compiled)), COMPRESSION_LEVEL
    )
    partial = target.with_suffix(".partial")
    partial.write_bytes(payload)
    partial.replace(target)
    for old in directory.glob(f"step-*{SUFFIX}"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


def load(directory: Path, key: str, mesh: jax.sharding.Mesh) -> jax.stages.Compiled | None:
    """The step saved under `key`, on the devices of `mesh` (those it was compiled for: the key
    names them); None when there is none, or when it cannot be loaded (said)."""
    path = path_of(directory, key)
    if not path.is_file():
        return None
    try:
        serialized, in_tree, out_tree = pickle.loads(zlib.decompress(path.read_bytes()))
        return serialize_executable.deserialize_and_load(
            serialized, in_tree, out_tree, execution_devices=list(mesh.devices.flat)
        )
    except Exception as error:  # noqa: BLE001 (a damaged or foreign file: compile instead)
        logger.warning("the saved step %s cannot be loaded (%s); compiling it", path, error)
        return None


def differences(compiled: jax.stages.Compiled, *args: Any) -> list[str]:
    """Where the inputs `args` differ from those `compiled` takes: tree, or each leaf's shape,
    dtype, weak type and sharding (empty: the step can be called with them)."""
    tree = jax.tree.structure((args, {}))
    if compiled.in_tree != tree:
        return [f"input tree {compiled.in_tree} vs {tree}"]
    avals = tree.flatten_up_to(compiled.in_avals)
    shardings = tree.flatten_up_to(compiled.input_shardings)  # keeps None: any sharding
    return [
        f"input {i}: {aval.str_short()} on {sharding} vs {x.dtype}{list(x.shape)} on {x.sharding}"
        for i, (aval, sharding, x) in enumerate(
            zip(avals, shardings, jax.tree.leaves(args), strict=True)
        )
        if (aval.shape, aval.dtype, aval.weak_type)
        != (x.shape, x.dtype, bool(getattr(x, "weak_type", False)))
        or (sharding is not None and not sharding.is_equivalent_to(x.sharding, len(x.shape)))
    ]
