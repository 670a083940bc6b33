"""Raw images to annotate: a folder, a text file listing image paths, or webdataset tars."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from data.annotation.items import Drop, Dropped, Item
from data.records import IMAGE_ERRORS, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
LIST_SUFFIXES = (".txt", ".lst")
TAR_SUFFIX = ".tar"


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """Where one raw image is: a file, or a member of a tar; `key` names it in the manifest."""

    key: str
    path: str
    member: str | None = None

    def read(self) -> bytes:
        if self.member is None:
            return Path(self.path).read_bytes()
        with tarfile.open(self.path) as tar:
            return tar.extractfile(self.member).read()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _refs(source: Path) -> Iterable[ImageRef]:
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and _is_image(path.name):
                yield ImageRef(path.relative_to(source).as_posix(), str(path))
    elif source.suffix == TAR_SUFFIX:
        with tarfile.open(source) as tar:
            for member in tar.getmembers():
                if member.isfile() and _is_image(member.name):
                    yield ImageRef(f"{source.stem}/{member.name}", str(source), member.name)
    elif source.suffix in LIST_SUFFIXES:
        for line in source.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield ImageRef(line.strip(), str(source.parent / line.strip()))
    elif source.is_file():
        yield ImageRef(source.name, str(source))
    else:
        raise FileNotFoundError(f"{source} is neither an image, a folder, a list nor a tar")


def list_images(sources: Iterable[str]) -> list[ImageRef]:
    """Every image of the sources, by key; a key found twice is an error naming it."""
    refs: dict[str, ImageRef] = {}
    for source in sources:
        for ref in _refs(Path(source)):
            if ref.key in refs:
                raise ValueError(f"image key {ref.key!r} found twice: {refs[ref.key]} and {ref}")
            refs[ref.key] = ref
    return [refs[key] for key in sorted(refs)]


def open_image(ref: ImageRef, min_side: int) -> Item | Dropped:
    """The image as the record builder will store it (upright RGB), or why it cannot be used."""
    try:
        data, _, height, width = read_image(ref.read())
        with Image.open(io.BytesIO(data)) as image:
            pixels = image.convert("RGB")
    except IMAGE_ERRORS as error:
        return Dropped(ref.key, Drop.UNREADABLE, str(error))
    if min(height, width) < min_side:
        return Dropped(ref.key, Drop.TINY, f"{width}x{height}")
    return Item(ref.key, pixels, ref=ref)
