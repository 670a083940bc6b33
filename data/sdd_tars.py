"""The Subject-Diffusion release layout: webdataset tars of `jpg`, `txt`, `json` and `png`.

Per sample (files sharing a key, the name up to its first dot): `jpg` the image, `txt` the
original alt text, `json` `{"caption": ..., "mask": [{"value", "label", "logit", "box"}, ...]}`
(the first entry, without a box, is the background), and `png` an instance-index map in which
pixels equal to an entry's `value` belong to that entity. The json caption is used, else `txt`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data.masks import MaskError, decode_index_png
from data.records import RawEntity, RawImage, Reason, Skip

IMAGE_EXTENSIONS = ("jpg", "jpeg")


def split_member_name(name: str) -> tuple[str, str]:
    """(sample key, extension) of a tar member, as webdataset groups them."""
    folder, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return posixpath.join(folder, stem), extension.lower()


def tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each run of consecutive members sharing a key."""
    key, files = None, {}
    with tarfile.open(path, "r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            member_key, extension = split_member_name(member.name)
            if member_key != key and files:
                yield key, files
                files = {}
            key = member_key
            files[extension] = archive.extractfile(member).read()
    if files:
        yield key, files


def _value_mask(
    index_map: Callable[[], np.ndarray], value: int, _height: int, _width: int
) -> np.ndarray:
    return index_map() == value


def _missing_png(_height: int, _width: int) -> np.ndarray:
    raise MaskError("the sample has no png index map")


@dataclasses.dataclass(frozen=True)
class SddTarSource:
    """Samples of Subject-Diffusion webdataset tars; each tar is one unit of work."""

    tars: tuple[str, ...]

    def units(self) -> list[str]:
        return sorted(self.tars)

    def read(self, unit: str) -> Iterator[RawImage | Skip]:
        tar_name = Path(unit).name
        try:
            for key, files in tar_samples(unit):
                yield self._sample(unit, f"{tar_name}/{key}", files)
        except (tarfile.TarError, OSError) as error:
            yield Skip(Reason.MALFORMED, unit, "archive", f"unreadable tar: {error}")

    def _sample(self, tar: str, key: str, files: dict[str, bytes]) -> RawImage | Skip:
        image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
        if image is None or "json" not in files:
            return Skip(Reason.MALFORMED, tar, key, f"sample has only {sorted(files)}")
        try:
            meta = json.loads(files["json"])
        except ValueError as error:
            return Skip(Reason.MALFORMED, tar, key, f"json: {error}")
        entries = meta.get("mask", []) if isinstance(meta, dict) else None
        if not isinstance(entries, list):
            return Skip(Reason.MALFORMED, tar, key, "json has no list of masks")
        caption = meta.get("caption") or files.get("txt", b"").decode("utf-8", "replace")
        index_map = (
            functools.cache(functools.partial(decode_index_png, files["png"]))
            if "png" in files
            else None
        )
        return RawImage(
            key=key,
            file=tar,
            record=key,
            load_image=lambda: image,
            caption=caption,
            entities=tuple(
                _entity(e, index_map, tar, key)
                for e in entries
                if not (isinstance(e, dict) and "box" not in e)  # the background entry
            ),
        )


def _entity(
    entry: Any, index_map: Callable[[], np.ndarray] | None, tar: str, key: str
) -> RawEntity | Skip:
    """An entity of the json's mask list, or why it cannot be used."""
    valid = (
        isinstance(entry, dict)
        and isinstance(entry.get("value"), int)
        and isinstance(entry.get("label"), str)
        and isinstance(entry.get("logit", 1.0), int | float)
    )
    if not valid:
        detail = f"mask entry {entry!r} needs an integer value, a label and a numeric logit"
        return Skip(Reason.MALFORMED, tar, key, detail, True)
    return RawEntity(
        label=entry["label"],
        box=entry["box"],
        mask=functools.partial(_value_mask, index_map, entry["value"])
        if index_map
        else _missing_png,
        score=float(entry.get("logit", 1.0)),
    )
