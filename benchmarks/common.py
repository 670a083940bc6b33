"""Helpers shared by the benchmarks: timing, peak memory, subprocess workers, tables.

Every framework of a comparison runs in its own worker process (this script re-run with
`--worker NAME`), so the peak resident memory a worker reports (`ru_maxrss` of itself, read when
it finishes) belongs to that framework alone; the parent runs the workers one after the other and
prints one table. Times are medians over repeated runs after a warm-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULT_MARK = "BENCHMARK_RESULT "
GIB = 1024**3


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` untimed runs.

    `fn` must wait for its own result (`block_until_ready`, `.item()`).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def report(result: dict[str, Any]) -> None:
    """A worker's last word: its measurements plus its own peak RSS, on one marked line."""
    result = {**result, "peak_rss_gib": peak_rss_gib()}
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_worker(
    script: str | Path,
    worker: str,
    args: Sequence[str] = (),
    python: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Runs `python script --worker NAME args` and returns what it `report`ed.

    On failure the worker's output tail is returned under "error" instead of raising, so one
    failing peer does not lose the others' figures.
    """
    command = [python or sys.executable, str(script), "--worker", worker, *args]
    proc = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"error": f"worker {worker} exited {proc.returncode}:\n" + "\n".join(tail)}


def machine_description() -> str:
    """CPU model, cores, memory, Python: the header line of every report."""
    sys.path.insert(0, str(Path(__file__).parent))
    from input_pipeline import cpu_name  # noqa: PLC0415 (pulls TensorFlow: parent process only)

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {memory:.0f} GiB; python "
        f"{platform.python_version()}; load average {load}"
    )


def versions(*modules: str) -> str:
    """`name version` of each importable module, comma-separated."""
    found = []
    for name in modules:
        try:
            module = __import__(name)
        except ImportError:
            continue
        found.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(found)


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: result key, header, format."""

    key: str
    header: str
    fmt: str = "{:.3f}"


def table(rows: Sequence[tuple[str, dict[str, Any]]], columns: Sequence[Column]) -> str:
    """A Markdown table with one row per (label, result); missing values print as '–'."""
    lines = [
        "| " + " | ".join(["run", *(c.header for c in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for label, result in rows:
        cells = [
            c.fmt.format(result[c.key]) if result.get(c.key) is not None else "–" for c in columns
        ]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def ratio_line(name: str, ours: float | None, peers: dict[str, float | None]) -> str:
    """'name: ours / fastest peer = r (target ...)' for the peers that produced a figure."""
    present = {k: v for k, v in peers.items() if v}
    if not ours or not present:
        return f"{name}: no ratio (missing figures)"
    best = min(present, key=present.get)
    return f"{name}: sdjax {ours:.3f} / {best} {present[best]:.3f} = {ours / present[best]:.2f}x"


def print_errors(rows: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """The output tail of each worker that failed."""
    for label, result in rows:
        if "error" in result:
            print(f"\n[{label}] {result['error']}", file=sys.stderr)
