"""Time from process start to the first step of `python train.py`, as a user sees it.

Runs `python train.py --config=CONFIG --workdir=WORKDIR --config.train.num_steps=100000
--config.compilation_cache=CACHE [FLAG ...]` (FLAG: the arguments this script does not know) in
a child process, reads its start-up lines and its progress bar as they come, and stops it with
SIGTERM once the bar shows one step more than it started with (the run saves a checkpoint: the
same command then measures a resume). Prints one JSON line: seconds since the launch at which
each start-up stage's line came (data, model, compile, restore) and the first step, the CPU
seconds the process had used by then (all its threads), and the process wall time.

    python benchmarks/first_step.py --workdir /tmp/run --cache /tmp/cache        # fresh
    python benchmarks/first_step.py --workdir /tmp/run --cache /tmp/cache        # resume
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 100000  # never reached: the run is stopped after its first step
STAGE_LINE = re.compile(r"\[\s*[\d.]+s\] (\w+):")
BAR_LINE = re.compile(rf"train:.*\|\s*(\d+)/{NUM_STEPS}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FirstStep:
    """Reads a training process's output; stops it at its first step."""

    def __init__(self, process: subprocess.Popen, start: float):
        self.process, self.start = process, start
        self.marks: dict[str, float] = {}
        self.initial_step: int | None = None
        self.lock = threading.Lock()

    def read(self, stream) -> None:
        pending = b""
        while chunk := os.read(stream.fileno(), 4096):
            now = round(time.perf_counter() - self.start, 2)
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in lines:
                with self.lock:
                    self.mark(line.decode(errors="replace"), now)

    def mark(self, line: str, now: float) -> None:
        if stage := STAGE_LINE.match(line):
            self.marks.setdefault(stage.group(1), now)
        if (bar := BAR_LINE.search(line)) and "first_step" not in self.marks:
            step = int(bar.group(1))
            self.initial_step = step if self.initial_step is None else self.initial_step
            if step > self.initial_step:
                self.marks["first_step"] = now
                self.marks["cpu_s"] = round(cpu_seconds(self.process.pid), 2)
                self.process.send_signal(signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--cache", default="auto", help="config.compilation_cache")
    args, flags = parser.parse_known_args()  # the rest: more train.py flags
    command = [
        sys.executable,
        "train.py",
        f"--config={args.config}",
        f"--workdir={args.workdir}",
        f"--config.train.num_steps={NUM_STEPS}",
        f"--config.compilation_cache={args.cache}",
        *flags,
    ]
    start = time.perf_counter()
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process = subprocess.Popen(command, cwd=REPO, **pipes)
    watcher = FirstStep(process, start)
    readers = [
        threading.Thread(target=watcher.read, args=(s,)) for s in (process.stdout, process.stderr)
    ]
    for reader in readers:
        reader.start()
    returncode = process.wait()
    for reader in readers:
        reader.join()
    result = {**watcher.marks, "wall": round(time.perf_counter() - start, 2), "rc": returncode}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
