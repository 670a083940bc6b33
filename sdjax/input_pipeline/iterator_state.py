"""The input pipeline's position as an item of an orbax checkpoint.

The tf.data iterator's state (file positions, shuffle buffer, running skip counts, prefetched
batches) is written with `tf.train.Checkpoint` (`CheckpointableIterator.write_state`), one file
set per process, inside the item's directory; restoring it makes the iterator continue exactly
where the saved one stood. This module does not import TensorFlow: the iterator it is given does.

    manager.save(step, args=ocp.args.Composite(state=..., data=IteratorSave(iterator)))
    manager.restore(step, args=ocp.args.Composite(state=..., data=IteratorRestore(iterator)))
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import orbax.checkpoint as ocp
from etils import epath

if TYPE_CHECKING:
    from sdjax.input_pipeline.iterator import CheckpointableIterator


class IncompatibleInputState(ValueError):
    """A saved input position written by a pipeline of another layout (e.g. an older reader)."""


class IteratorHandler(ocp.CheckpointHandler):
    """Saves and restores a `CheckpointableIterator`'s tf.data state in an orbax checkpoint item."""

    def save(self, directory: epath.Path, args: IteratorSave) -> None:
        args.iterator.write_state(_prefix(directory))

    def restore(self, directory: epath.Path, args: IteratorRestore) -> CheckpointableIterator:
        args.iterator.read_state(_prefix(directory))
        return args.iterator


def _prefix(directory: epath.Path) -> str:
    """Checkpoint prefix of this process's iterator inside the item directory."""
    return str(directory / f"process_{jax.process_index()}-of-{jax.process_count()}")


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
    """Save the state of `iterator`."""

    iterator: CheckpointableIterator


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
    """Restore saved state into `iterator` (built with the same config) and return it."""

    iterator: CheckpointableIterator
