"""`train.py` as a scheduler sees it: start-up status lines, one run per work directory, and the
exit code of a run stopped by SIGTERM; the lock of a killed process is released."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sdjax import cli
from sdjax.training.workdir_lock import LOCK_FILE, WorkdirLocked, workdir_lock

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600


def _train(workdir: Path, *overrides: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "train.py",
        "--config=tests/training_config.py",
        f"--workdir={workdir}",
        *overrides,
    ]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _read_until(process: subprocess.Popen, marker: str) -> list[str]:
    lines, deadline = [], time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(
                f"exited before {marker!r}: {lines} {process.stderr.read()[-2000:]}"
            )
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in {TIMEOUT} s: {lines}")


def _sigterm_after_steps(process: subprocess.Popen) -> tuple[str, str]:
    try:
        time.sleep(2)  # a few steps
        process.send_signal(signal.SIGTERM)
        return process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()


def test_second_run_is_refused_and_sigterm_exits_for_requeue(tmp_path):
    workdir = tmp_path / "run"
    # Its own compilation cache: the first run compiles the step afresh, so it keeps it.
    flags = (
        "--config.train.num_steps=100000",
        "--config.train.checkpoint_every=1000",
        f"--config.compilation_cache={tmp_path / 'cache'}",
    )
    first = _train(workdir, *flags)
    try:
        startup = _read_until(first, "compile:")
        stages = [line.split("]")[1].split(":")[0].strip() for line in startup if "s] " in line]
        assert stages[:3] == ["data", "model", "compile"], startup

        second = _train(workdir, "--config.train.num_steps=3")
        out, err = second.communicate(timeout=TIMEOUT)
        assert second.returncode == cli.EXIT_ERROR, (out, err)
        assert f"process {first.pid}" in err and "Traceback" not in err, err
        assert [line for line in err.splitlines() if line.startswith("error:")] == [
            err.strip().splitlines()[-1]
        ], err

    finally:
        out, err = _sigterm_after_steps(first)
    assert first.returncode == cli.EXIT_PREEMPTED, (out, err[-2000:])
    assert "run the same command to resume" in out
    assert list((workdir / "checkpoints").iterdir()), "no checkpoint saved on SIGTERM"
    assert not (workdir / "export").exists()

    # The same command resumes with the step the first run compiled and kept.
    resumed = _train(workdir, *flags)
    try:
        startup = _read_until(resumed, "compile:")
        assert "train step loaded from" in startup[-1], startup
        _read_until(resumed, "restore:")
    finally:
        out, err = _sigterm_after_steps(resumed)
    assert resumed.returncode == cli.EXIT_PREEMPTED, (out, err[-2000:])


def test_lock_names_its_holder_and_a_killed_holder_releases_it(tmp_path):
    hold = (
        "import sys, time; from sdjax.training.workdir_lock import workdir_lock\n"
        f"with workdir_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        try:
            with workdir_lock(tmp_path):
                raise AssertionError("the lock of a live process was taken")
        except WorkdirLocked as error:
            assert f"process {holder.pid}" in str(error)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    with workdir_lock(tmp_path), workdir_lock(tmp_path):  # free again, and re-entrant
        assert f"process {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()


def test_config_typo_is_one_line_and_help_loads_no_tensorflow():
    typo = subprocess.run(
        [sys.executable, "train.py", "--config=configs/tiny.py", "--config.train.num_stepz=5"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert typo.returncode == cli.EXIT_USAGE and "Traceback" not in typo.stderr
    assert typo.stderr.strip().splitlines() == [
        "error: --config.train.num_stepz=5: 'num_stepz' Did you mean \"num_steps\" instead of "
        '"num_stepz"? (see --help)'
    ]
    probe = (
        "import runpy, sys; sys.argv = ['train.py', '--help']\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('loaded:', sorted({'tensorflow', 'transformers'} & set(sys.modules)))"
    )
    shown = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert "--workdir" in shown.stdout and "loaded: []" in shown.stdout, shown.stdout[-500:]


def test_missing_data_is_one_line_naming_the_pattern(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config=configs/tiny.py",
            f"--workdir={tmp_path / 'run'}",
            "--config.data.file_pattern=/nonexistent/*",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == cli.EXIT_ERROR and "Traceback" not in run.stderr, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [run.stderr.strip().splitlines()[-1]], run.stderr[-2000:]
    assert "'/nonexistent/*'" in errors[0], errors
