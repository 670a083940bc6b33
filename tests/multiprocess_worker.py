"""One process of a multi-process training step on localhost (run by `test_multiprocess.py`).

Each process simulates `--devices` CPU devices, joins the others through `jax.distributed` with
gloo CPU collectives, reads its own share of the records, assembles the global batch, takes one
training step on a mesh over every process's devices, and (process 0) writes the loss and the
updated trainable parameters, gathered from all processes, to an .npz file.

    python tests/multiprocess_worker.py --process-id=0 --num-processes=2 --port=PORT \\
        --records=a.tfrecord,b.tfrecord --mesh=data=2,fsdp=4 --out=result.npz
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import re
import signal
import sys
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--port", type=int, required=True, help="coordinator port on 127.0.0.1")
    parser.add_argument("--devices", type=int, default=4, help="simulated CPU devices per process")
    parser.add_argument("--records", required=True, help="comma-separated TFRecord files")
    parser.add_argument("--mesh", default="data=2,fsdp=4", help="axis=size,... over all devices")
    parser.add_argument("--timeout", type=int, default=120, help="seconds to wait for the others")
    parser.add_argument("--out", required=True, help="where the results are written")
    return parser.parse_args()


def simulate_cpu_devices(count: int) -> None:
    """Sets this process's simulated CPU device count; must run before JAX is imported."""
    if "jax" in sys.modules:
        raise RuntimeError("the device count must be set before JAX is imported")
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
    )
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


def parse_mesh(text: str) -> dict[str, int]:
    return {name: int(size) for name, size in (item.split("=") for item in text.split(","))}


def join(args: argparse.Namespace) -> None:
    """Simulates this process's CPU devices and joins the others (gloo CPU collectives); SIGUSR1
    prints every thread's stack (what a hung worker was waiting for)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    simulate_cpu_devices(args.devices)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=args.timeout,
        heartbeat_timeout_seconds=args.timeout,
        shutdown_timeout_seconds=args.timeout,
    )
    assert jax.local_device_count() == args.devices, jax.local_devices()


def gathered_params(params) -> dict:
    """Every process's shards of `params` gathered, as {key path: array} (a collective)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    flat = jax.tree_util.tree_flatten_with_path(
        multihost_utils.process_allgather(params, tiled=True)
    )[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


def main() -> None:
    args = parse_args()
    join(args)

    import jax
    import numpy as np

    from sdjax import sharding, trainer
    from sdjax.input_pipeline import pipeline
    from tests.training_config import micro_config

    config = micro_config(args.records)
    mesh = sharding.make_mesh(parse_mesh(args.mesh))
    run = trainer.build_run(config, mesh)
    local = next(pipeline.make_iterator(config.data, jax.process_index(), jax.process_count()))
    batch = trainer.global_batch(local, sharding.batch_sharding(mesh))
    state, metrics = run.step_fn(run.state, run.frozen, batch)

    params = gathered_params(state.params)
    if jax.process_index() == 0:
        np.savez(args.out, loss=np.asarray(jax.device_get(metrics["loss"])), **params)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
