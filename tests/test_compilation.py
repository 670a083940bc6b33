"""XLA flags of the entry points: added once, never overriding the user's own."""

from sdjax.compilation import XLA_FLAGS, add_xla_flags

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
