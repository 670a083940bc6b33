"""One run per work directory: an exclusive `flock` on `WORKDIR/.lock`.

The kernel drops the lock when its process ends, however it ends, so a crashed or killed run never
leaves a directory locked. The file names the holder (process id, host, command) so that a second
run can say who holds it. Within one process the lock is re-entrant.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"
_held: set[Path] = set()  # work directories (resolved) this process holds


class WorkdirLocked(RuntimeError):
    """Another process is running in the work directory."""


@contextlib.contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[None]:
    """Holds the work directory's lock, or raises `WorkdirLocked` naming the other process."""
    directory = Path(workdir).resolve()
    if directory in _held:  # the outer holder releases it
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    stream = open(path, "a+")  # noqa: SIM115 (held open while the lock is)
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.seek(0)
        holder = stream.read().strip() or "another process"
        stream.close()
        raise WorkdirLocked(
            f"{workdir} is in use by {holder}; wait for it to end or choose another work directory"
        ) from None
    stream.seek(0)
    stream.truncate()
    command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    stream.write(f"process {os.getpid()} on {socket.gethostname()} ({command}, since {started})")
    stream.flush()
    _held.add(directory)
    try:
        yield
    finally:
        _held.discard(directory)
        fcntl.flock(stream, fcntl.LOCK_UN)
        stream.close()
