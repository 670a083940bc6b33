"""orbax checkpoints of a run: the train state and the input pipeline's position, saved together.

Frozen pretrained weights are not copied into checkpoints: they are rebuilt from the config
(a pretrained folder, or the seed of a random initialisation) when a run starts or resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import jax
import orbax.checkpoint as ocp

from sdjax.input_pipeline.iterator_state import IteratorRestore, IteratorSave

if TYPE_CHECKING:
    from sdjax.input_pipeline.iterator import PipelineIterator


class Checkpointer:
    """Keeps the last `keep` checkpoints under `directory`; saves every `every` steps or when forced."""

    def __init__(self, directory: str | Path, *, every: int, keep: int, use_async: bool):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=every,
            enable_async_checkpointing=use_async,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), item_names=("state", "data"), options=options
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, iterator: PipelineIterator, *, force: bool = False) -> bool:
        """Saves when the interval says so (or `force`); returns whether a save started."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=IteratorSave(iterator))
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state, iterator: PipelineIterator):
        """Restores the state onto the shardings of `abstract_state` (any mesh) and the iterator."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state
        )
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=IteratorRestore(iterator)
        )
        restored = self.manager.restore(step, args=args)
        return restored.state, restored.data

    def restore_state(self, step: int, abstract_state):
        """Only the train state (no input pipeline), e.g. for export."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state
        )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        return self.manager.restore(step, args=args).state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
