"""Two processes on localhost (`jax.distributed`, gloo CPU collectives), 4 simulated devices each,
take the same training step as one process with 8 devices on the same global batch."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from data.build_sample import build_sample_records
from sdjax import sharding, trainer
from sdjax.input_pipeline import pipeline
from tests.training_config import micro_config

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiprocess_worker.py"
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 4
MESH = {"data": 2, "fsdp": 4}  # data parallel across the processes, FSDP within each
TOLERANCE = 1e-5  # float32, max abs difference of loss and updated parameters
TIMEOUT_SECONDS = 600  # for both workers together; they are killed after it
LOG_TAIL = 3000  # characters of each worker's log shown on failure


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return ",".join(build_sample_records(tmp_path_factory.mktemp("sample")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(records: str, out: Path, logs: Path) -> list[subprocess.Popen]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    workers = []
    for i in range(NUM_PROCESSES):
        command = [
            sys.executable,
            str(WORKER),
            f"--process-id={i}",
            f"--num-processes={NUM_PROCESSES}",
            f"--port={port}",
            f"--devices={DEVICES_PER_PROCESS}",
            f"--records={records}",
            "--mesh=" + ",".join(f"{k}={v}" for k, v in MESH.items()),
            f"--out={out}",
        ]
        log = (logs / f"process{i}.log").open("w")
        workers.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        )
    return workers


def wait_all(workers: list[subprocess.Popen], deadline: float) -> bool:
    """Whether every worker ended before `deadline`."""
    try:
        for worker in workers:
            worker.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        return False
    return True


def one_process_step(records: str) -> dict[str, np.ndarray]:
    """The step on 8 devices of this process, fed both processes' shares of the global batch."""
    config = micro_config(records)
    mesh = sharding.make_mesh(MESH)
    shares = [
        next(pipeline.make_iterator(config.data, i, NUM_PROCESSES)) for i in range(NUM_PROCESSES)
    ]
    local = {k: np.concatenate([share[k] for share in shares]) for k in shares[0]}
    run = trainer.build_run(config, mesh)
    state, metrics = run.step_fn(
        run.state, run.frozen, trainer.global_batch(local, sharding.batch_sharding(mesh))
    )
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    return {"loss": np.asarray(jax.device_get(metrics["loss"]))} | {
        jax.tree_util.keystr(path): np.asarray(x) for path, x in flat
    }


def test_two_processes_match_one_process(records, tmp_path):
    out = tmp_path / "two_processes.npz"
    deadline = time.monotonic() + TIMEOUT_SECONDS
    workers = start_workers(records, out, tmp_path)
    try:
        reference = one_process_step(records)
        finished = wait_all(workers, deadline)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    logs = {i: (tmp_path / f"process{i}.log").read_text()[-LOG_TAIL:] for i in range(NUM_PROCESSES)}
    assert finished, f"workers still running after {TIMEOUT_SECONDS} s, killed; logs: {logs}"
    codes = [worker.returncode for worker in workers]
    assert codes == [0] * NUM_PROCESSES, f"worker exit codes {codes}; logs: {logs}"

    result = dict(np.load(out))
    assert sorted(result) == sorted(reference), set(result) ^ set(reference)
    assert abs(float(result["loss"]) - float(reference["loss"])) <= TOLERANCE
    diffs = {k: float(np.max(np.abs(result[k] - reference[k]))) for k in reference}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOLERANCE, (worst, diffs[worst])
