"""Stopping a run cleanly: SIGTERM/SIGINT become a flag, and every process of a multi-host run
agrees on the step at which it stops (orbax saves are collective: hosts that saved at different
steps would hang or tear the checkpoint)."""

from __future__ import annotations

import signal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

VOTE_AXIS = "processes"


class Preemption:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (then saves and exits)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> Preemption:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StopVote:
    """Whether any process asked to stop, the same answer on every process at the same step.

    Each call casts this process's flag and returns the outcome of the previous call's vote: an
    all-reduce over every device, dispatched without waiting, so the step queued after it keeps
    the devices busy while the host reads the outcome one step later. Every process must call it
    once per step. With one process the flag is its own answer, at once and without a collective.
    """

    def __init__(self, devices: list[jax.Device] | None = None):
        devices = jax.devices() if devices is None else devices
        self.single = len({d.process_index for d in devices}) == 1
        self._votes = NamedSharding(Mesh(np.array(devices), (VOTE_AXIS,)), PartitionSpec(VOTE_AXIS))
        self._local = sum(d.process_index == jax.process_index() for d in devices)
        self._any = jax.jit(jnp.any, out_shardings=NamedSharding(self._votes.mesh, PartitionSpec()))
        self._pending: jax.Array | None = None

    def __call__(self, flag: bool) -> bool:
        if self.single:
            return flag
        local = np.full((self._local,), flag)
        cast = self._any(jax.make_array_from_process_local_data(self._votes, local))
        outcome = self._pending is not None and bool(self._pending)
        self._pending = cast
        return outcome

    def settle(self) -> None:
        """Waits for the last vote, so that no collective of it is in flight after the loop."""
        if self._pending is not None:
            self._pending.block_until_ready()
            self._pending = None
