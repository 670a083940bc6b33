"""XLA flags the command-line entry points set, and returning the compiler's scratch memory."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, MutableMapping

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
