"""XLA flags of the entry points (added once, never overriding the user's own) and the
persistent compilation cache (used across processes)."""

import os
import subprocess
import sys
from pathlib import Path

from sdjax.compilation import CACHE_ENV, XLA_FLAGS, add_xla_flags, enable_compilation_cache

FLAG = next(iter(XLA_FLAGS))


def test_adds_flags_to_an_empty_environment():
    environ = {}
    assert add_xla_flags(environ=environ) == f"--{FLAG}={XLA_FLAGS[FLAG]}"


def test_keeps_other_flags_and_adds_once():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    add_xla_flags(environ=environ)
    twice = add_xla_flags(environ=environ)
    assert twice.split() == [
        "--xla_force_host_platform_device_count=8",
        f"--{FLAG}={XLA_FLAGS[FLAG]}",
    ]


def test_users_value_wins():
    environ = {"XLA_FLAGS": f"--{FLAG}=true"}
    assert add_xla_flags(environ=environ) == f"--{FLAG}=true"


# A child process that compiles a few programs with the cache in argv[1] ("off" for none) and prints
# how many programs it took from the cache and how many it compiled and stored.
CHILD = """
import sys
import jax
from sdjax.compilation import enable_compilation_cache

events = []
jax.monitoring.register_event_listener(lambda name, **kwargs: events.append(name))
enable_compilation_cache(sys.argv[1], environ={})
jax.jit(lambda x: (x @ x.T).sum())(jax.numpy.ones((64, 64))).block_until_ready()
print(events.count("/jax/compilation_cache/cache_hits"), events.count("/jax/compilation_cache/cache_misses"))
"""


def _compile_in_child(cache: str) -> tuple[int, int]:
    """(cache hits, cache misses) of a fresh process compiling one program."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # cache even a tiny program
    out = subprocess.run(
        [sys.executable, "-c", CHILD, cache],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    hits, misses = out.stdout.split()
    return int(hits), int(misses)


def test_a_second_process_takes_the_program_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    hits, compiled = _compile_in_child(str(cache))
    assert hits == 0 and compiled >= 1
    assert any(cache.iterdir())
    assert _compile_in_child(str(cache)) == (compiled, 0)


def test_the_cache_can_be_turned_off(tmp_path):
    assert _compile_in_child("off") == (0, 0)


def test_auto_takes_the_users_folder_then_jax_s_then_the_user_cache(tmp_path):
    import jax

    folder = str(tmp_path / "mine")
    assert enable_compilation_cache("auto", {CACHE_ENV: folder}) == folder
    jax_dir = str(tmp_path / "jax")
    assert enable_compilation_cache("auto", {"JAX_COMPILATION_CACHE_DIR": jax_dir}) == jax_dir
    home = str(tmp_path / "home")
    assert enable_compilation_cache("auto", {"XDG_CACHE_HOME": home}) == str(
        Path(home) / "sdjax" / "jax-compilation"
    )
    assert enable_compilation_cache("auto", {CACHE_ENV: "off"}) is None
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_enable_compilation_cache", True)
