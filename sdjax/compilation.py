"""What the command-line entry points set up before JAX starts: XLA flags and the persistent
compilation cache; and returning the compiler's scratch memory."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

# XLA:CPU's default scheduler orders a program for parallelism between independent operations and
# so runs every operation that needs only parameters at the start: the float32 copies and
# transposes of bfloat16 kernels that XLA:CPU convolves with all live at once. The
# memory-minimising scheduler keeps each next to its use (SD 2 base training step in bfloat16:
# 11.6 GiB of temporaries become 7.7 GiB). XLA:CPU reads this flag only from XLA_FLAGS, not from
# per-program compiler options. It does not concern GPUs or TPUs.
XLA_FLAGS: Mapping[str, str] = {"xla_cpu_enable_concurrency_optimized_scheduler": "false"}


def add_xla_flags(
    flags: Mapping[str, str] = XLA_FLAGS, environ: MutableMapping[str, str] = os.environ
) -> str:
    """Adds each of `flags` to `environ["XLA_FLAGS"]` unless it is already there; returns it.

    XLA reads XLA_FLAGS when JAX starts its first backend, so call this before any array exists.
    """
    current = environ.get("XLA_FLAGS", "")
    given = {item.split("=")[0].lstrip("-") for item in current.split()}
    added = [f"--{name}={value}" for name, value in flags.items() if name not in given]
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return environ["XLA_FLAGS"]


CACHE_ENV = "SDJAX_COMPILATION_CACHE"  # a folder, `auto` or `off`; read when none is given
CACHE_OFF = ("off", "none", "")
# Bounding the cache turns on JAX's least-recently-used eviction, and with it a file lock around
# every read and write: two runs starting at once never read an entry the other is still writing.
CACHE_MAX_BYTES = 16 * 2**30


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """JAX's own `JAX_COMPILATION_CACHE_DIR` when set, else sdjax's folder in the user's cache."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(environ["JAX_COMPILATION_CACHE_DIR"])
    cache_home = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "sdjax" / "jax-compilation"


def enable_compilation_cache(
    directory: str = "auto", environ: Mapping[str, str] = os.environ
) -> str | None:
    """Turns on JAX's persistent compilation cache in `directory` and returns it (None: off).

    `auto` takes `$SDJAX_COMPILATION_CACHE` when set, else `default_cache_dir()`; `off` turns the
    cache off. Every process of a pod may name the same folder (a shared file system or a
    `gs://` bucket): JAX keys entries by the program, its devices and compiler. Reads and writes
    are locked (`CACHE_MAX_BYTES`), so runs that start at once at worst compile a program twice.
    Call before the first compilation: JAX opens the cache then.
    """
    import jax  # noqa: PLC0415 (importing JAX is what the callers of add_xla_flags must defer)

    choice = environ.get(CACHE_ENV, "auto") if directory == "auto" else directory
    if choice.lower() in CACHE_OFF:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = str(default_cache_dir(environ)) if choice == "auto" else choice
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return path


def release_free_heap() -> bool:
    """Hands the heap pages freed by the compiler back to the system (glibc `malloc_trim`).

    glibc keeps freed memory in its arenas for reuse, so after compiling a large program (about
    1.7 GiB of scratch for the SD 2 base step) the process stays that much larger while the arrays
    that come next take fresh pages. False where the C library has no `malloc_trim`.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(trim(0))
