"""One process of a two-process training run on localhost stopped by SIGTERM to process 1 only
(run by `test_multiprocess.py`).

Each process trains the micro config to `NUM_STEPS` in OUT/runs, where process 1 receives SIGTERM
during step `SIGTERM_AT` (process 0 none), then again, resuming. Each process writes
OUT/process{i}.json (the step the first run stopped at, whether it was preempted, the checkpoints
it left, the step the second ended at); process 0 writes the final trainable parameters to
OUT/params.npz.

    python tests/preemption_worker.py --process-id=1 --num-processes=2 --port=PORT \\
        --records=a.tfrecord,b.tfrecord --mesh=data=2,fsdp=4 --out=DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.multiprocess_worker import gathered_params, join, parse_args, parse_mesh  # noqa: E402

NUM_STEPS = 4
SIGTERM_AT = 2
SIGNALLED_PROCESS = 1


def main() -> None:
    args = parse_args()
    join(args)

    import jax
    import numpy as np

    from sdjax import trainer
    from sdjax.input_pipeline import pipeline
    from tests.interrupt import sigterm_at_step
    from tests.training_config import micro_config

    config = micro_config(args.records)
    config.mesh.update(parse_mesh(args.mesh))
    config.train.update(num_steps=NUM_STEPS, checkpoint_every=100, async_checkpoints=True)
    out = Path(args.out)
    signalled = jax.process_index() == SIGNALLED_PROCESS
    first = trainer.train(
        config,
        out / "runs",
        make_batches=sigterm_at_step(SIGTERM_AT) if signalled else pipeline.make_iterator,
    )
    checkpoints = trainer.checkpointer(config, out / "runs")
    saved = checkpoints.manager.all_steps()
    checkpoints.close()
    resumed = trainer.train(config, out / "runs")
    report = {
        "first_step": first.step,
        "first_preempted": first.preempted,
        "saved_steps": sorted(saved),
        "resumed_step": resumed.step,
    }
    (out / f"process{jax.process_index()}.json").write_text(json.dumps(report))
    params = gathered_params(resumed.state.params)
    if jax.process_index() == 0:
        np.savez(out / "params.npz", **params)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
