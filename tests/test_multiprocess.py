"""Two processes on localhost (`jax.distributed`, gloo CPU collectives), 4 simulated devices each:
they take the same training step as one process with 8 devices on the same global batch, and a
SIGTERM to one of them stops both at the same step, from which they resume as if never stopped."""

import json
import os
import signal
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
from tests.preemption_worker import NUM_STEPS as PREEMPTION_STEPS
from tests.training_config import micro_config

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiprocess_worker.py"
PREEMPTION_WORKER = REPO / "tests" / "preemption_worker.py"
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 4
MESH = {"data": 2, "fsdp": 4}  # data parallel across the processes, FSDP within each
TOLERANCE = 1e-5  # float32, max abs difference of loss and updated parameters
TIMEOUT_SECONDS = 600  # for both workers together; they are killed after it
LOG_TAIL = 3000  # characters of each worker's log shown on failure
STACK_DUMP_SECONDS = 2  # for a worker still running at the deadline to print its stacks


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return ",".join(build_sample_records(tmp_path_factory.mktemp("sample")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(
    records: str, out: Path, logs: Path, worker: Path = WORKER
) -> list[subprocess.Popen]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    workers = []
    for i in range(NUM_PROCESSES):
        command = [
            sys.executable,
            str(worker),
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


def one_process_steps(records: str, steps: int = 1) -> dict[str, np.ndarray]:
    """`steps` steps on 8 devices of this process, each fed both processes' shares of the
    global batch: the loss of the last and the parameters after it."""
    config = micro_config(records)
    mesh = sharding.make_mesh(MESH)
    readers = [pipeline.make_iterator(config.data, i, NUM_PROCESSES) for i in range(NUM_PROCESSES)]
    run = trainer.build_run(config, mesh)
    state = run.state
    for _ in range(steps):
        shares = [next(reader) for reader in readers]
        local = {k: np.concatenate([share[k] for share in shares]) for k in shares[0]}
        state, metrics = run.step_fn(
            state, run.frozen, trainer.global_batch(local, sharding.batch_sharding(mesh))
        )
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    return {"loss": np.asarray(jax.device_get(metrics["loss"]))} | {
        jax.tree_util.keystr(path): np.asarray(x) for path, x in flat
    }


def run_workers(records: str, out: Path, logs: Path, worker: Path = WORKER, during=None):
    """Runs the workers to their end (killed after `TIMEOUT_SECONDS`), calling `during()` while
    they run; asserts that each exited with 0 and returns what `during` returned."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    workers = start_workers(records, out, logs, worker)
    try:
        result = during() if during is not None else None
        finished = wait_all(workers, deadline)
    finally:
        for worker_process in workers:
            if worker_process.poll() is None:
                worker_process.send_signal(signal.SIGUSR1)  # its stacks, into its log
                time.sleep(STACK_DUMP_SECONDS)
                worker_process.kill()
                worker_process.wait()
    logs = {i: (logs / f"process{i}.log").read_text()[-LOG_TAIL:] for i in range(NUM_PROCESSES)}
    assert finished, f"workers still running after {TIMEOUT_SECONDS} s, killed; logs: {logs}"
    codes = [worker_process.returncode for worker_process in workers]
    assert codes == [0] * NUM_PROCESSES, f"worker exit codes {codes}; logs: {logs}"
    return result


def test_two_processes_match_one_process(records, tmp_path):
    out = tmp_path / "two_processes.npz"
    reference = run_workers(records, out, tmp_path, during=lambda: one_process_steps(records))
    assert_close(dict(np.load(out)), reference)


def assert_close(result: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    """The same keys, each value within `TOLERANCE`."""
    assert sorted(result) == sorted(reference), set(result) ^ set(reference)
    diffs = {k: float(np.max(np.abs(result[k] - reference[k]))) for k in reference}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOLERANCE, (worst, diffs[worst])


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes(records, tmp_path):
    """Process 1 alone is signalled during step 2: both processes agree one step later, save
    step 3 and stop; run again, they resume and end where the straight run does."""
    out = tmp_path / "runs"
    straight = run_workers(
        records,
        out,
        tmp_path,
        PREEMPTION_WORKER,
        during=lambda: one_process_steps(records, PREEMPTION_STEPS),
    )
    reports = [json.loads((out / f"process{i}.json").read_text()) for i in range(NUM_PROCESSES)]
    assert reports[0] == reports[1], reports
    assert reports[0] == {
        "first_step": 3,
        "first_preempted": True,
        "saved_steps": [3],
        "resumed_step": PREEMPTION_STEPS,
    }, reports
    resumed = dict(np.load(out / "params.npz"))
    assert_close(resumed, {k: v for k, v in straight.items() if k != "loss"})
