"""Cached stages of a multi-stage run (world → VAE → Subject-Diffusion): a finished stage leaves a
marker with the settings it was made with and a SHA-256 of every file it wrote, so a later run
reuses it only when the settings are the same and every file is intact; otherwise it is rebuilt."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MARKER = "STAGE.json"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Stage:
    """One stage's folder: `is_complete(settings)` checks it, `mark_complete` seals it."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.marker = self.directory / MARKER

    def problem(self, settings: dict[str, Any]) -> str | None:
        """Why the stage cannot be reused (None when it can)."""
        if not self.marker.exists():
            return "not finished"
        try:
            record = json.loads(self.marker.read_text())
            files, made_with = record["files"], record["settings"]
        except (ValueError, KeyError, TypeError) as error:
            return f"unreadable {MARKER}: {error}"
        if made_with != _jsonable(settings):
            return "made with other settings"
        for name, expected in files.items():
            path = self.directory / name
            if not path.is_file():
                return f"{name} is missing"
            if file_digest(path) != expected:
                return f"{name} is corrupt (SHA-256 differs)"
        return None

    def is_complete(self, settings: dict[str, Any]) -> bool:
        return self.problem(settings) is None

    def mark_complete(self, files: Iterable[str | Path], settings: dict[str, Any]) -> None:
        """Records `files` (paths into the stage folder, or names inside it) and the settings they
        were made with."""
        digests = {
            self._name(file): file_digest(self.directory / self._name(file)) for file in files
        }
        record = {"settings": _jsonable(settings), "files": dict(sorted(digests.items()))}
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.marker)

    def _name(self, file: str | Path) -> str:
        """The stage-relative name of `file`: a path into the stage folder (absolute, or relative
        to the working directory), or a name inside it."""
        path, home = Path(file), self.directory.resolve()
        if not path.resolve().is_relative_to(home):
            path = self.directory / path
        return str(path.resolve().relative_to(home))

    def reset(self) -> None:
        """Removes the stage folder and everything in it."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _jsonable(settings: dict[str, Any]) -> Any:
    """Settings as they read back from JSON (tuples become lists)."""
    return json.loads(json.dumps(settings, default=list))
