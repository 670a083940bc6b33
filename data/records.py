"""From one source image with its annotations to one schema record, or the reasons it was skipped.

Sources (COCO, Subject-Diffusion tars, JSONL manifests) turn their files into `RawImage`s;
`build_example` applies the per-image validity checks of the data contract and encodes the
record. Only these checks happen here: the training-time filters belong to the reader.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import io
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from data.masks import MaskError
from sdjax import images
from sdjax import tokenizer as tok
from sdjax.captions import label_in_caption
from sdjax.input_pipeline import schema

# Re-encoded when the source image is neither JPEG nor PNG.
_KEPT_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# How many skipped records a report names, so a large build's report stays readable.
_LISTED_SKIPS = 20


class Reason(enum.Enum):
    """Why an image or an entity was not written."""

    UNREADABLE_IMAGE = "unreadable image file"
    CORRUPT_IMAGE = "corrupt image"
    MALFORMED = "malformed annotation"
    MISSING_CAPTION = "missing caption"
    UNDECODABLE_MASK = "undecodable mask"
    MASK_SIZE = "mask size differs from the image"
    BOX_OUTSIDE = "box outside the image"
    BOX_EMPTY = "box of zero area"
    BOX_INVERTED = "box corners inverted (not x0, y0, x1, y1)"
    LABEL_NOT_IN_CAPTION = "label not in caption"
    CROWD = "crowd annotation"
    TOO_FEW_ENTITIES = "too few entities"


# Deliberate selections, not bad input: `--strict` never turns these into errors.
FILTERS = frozenset({Reason.LABEL_NOT_IN_CAPTION, Reason.CROWD, Reason.TOO_FEW_ENTITIES})


class InputError(ValueError):
    """Bad input met with `strict=True`."""


@dataclasses.dataclass(frozen=True)
class Skip:
    """One image (or one entity of an image) left out, and where it came from."""

    reason: Reason
    file: str
    record: str
    detail: str = ""
    entity: bool = False

    def message(self) -> str:
        what = "entity" if self.entity else "image"
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.file}: record {self.record}: {what} skipped, {self.reason.value}{detail}"


@dataclasses.dataclass(frozen=True)
class RawEntity:
    """An entity as a source describes it.

    `mask(height, width)` decodes lazily, given the size of the decoded image (used by formats
    whose masks have no size of their own), and may raise `MaskError`; None for an entity
    annotated with a box only (its record entry is `schema.NO_MASK`).
    """

    label: str
    box: Sequence[float]  # pixels: x0, y0, x1, y1
    mask: Callable[[int, int], np.ndarray] | None
    score: float = 1.0


@dataclasses.dataclass(frozen=True)
class RawImage:
    """An image as a source describes it; `load_image()` returns the file's bytes."""

    key: str
    file: str
    record: str
    load_image: Callable[[], bytes]
    caption: str | None
    entities: tuple[RawEntity | Skip, ...]  # a source may already have rejected an entity


class Source(Protocol):
    """An input format: picklable units of work (for Beam), each read into images or skips."""

    def units(self) -> Sequence[Any]: ...

    def read(self, unit: Any) -> Iterator[RawImage | Skip]: ...


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Per-image checks; see `docs/data.md`."""

    require_label_in_caption: bool = True
    min_entities: int = 1
    box_tolerance: float = 1.0  # pixels a box may overshoot the image before it counts as outside
    strict: bool = False
    tokenizer_dir: str | None = None
    keys: str = "given"  # given: the source's key (a manifest's `key`, else its image path);
    # location: the source file and record ("m.jsonl:line 3"), unique even for repeated images


KEY_MODES = ("given", "location")
# How many repeated keys a duplicate-key error names.
_LISTED_DUPLICATES = 5


class DuplicateKeyError(ValueError):
    """Two or more images of a source share a record key."""


def record_key(image: RawImage, options: BuildOptions) -> str:
    """The key an image's record is written under (`BuildOptions.keys`)."""
    if options.keys not in KEY_MODES:
        raise ValueError(f"keys={options.keys!r}; choose one of {KEY_MODES}")
    return image.key if options.keys == "given" else f"{image.file}:{image.record}"


def check_unique_keys(source: Source, options: BuildOptions) -> None:
    """Raises `DuplicateKeyError` naming where each repeated key occurs, before any image is
    decoded (sources read their images lazily)."""
    places: dict[str, list[str]] = {}
    for unit in source.units():
        for item in source.read(unit):
            if isinstance(item, RawImage):
                places.setdefault(record_key(item, options), []).append(
                    f"{item.file} {item.record}"
                )
    repeated = {key: where for key, where in places.items() if len(where) > 1}
    if repeated:
        listed = "; ".join(
            f"{key!r} at {', '.join(where)}"
            for key, where in list(repeated.items())[:_LISTED_DUPLICATES]
        )
        raise DuplicateKeyError(
            f"{len(repeated)} record key(s) used by more than one image: {listed}. Remove the "
            "repeated lines, or pass --keys=location to key each image by its file and line"
        )


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The record built from one image (None when skipped) and everything left out of it."""

    example: schema.ImageExample | None
    skips: tuple[Skip, ...]


@functools.cache
def _tokenizer(model_dir: str | None) -> tok.CLIPTokenizer:
    return tok.load_tokenizer(model_dir)


def read_image(data: bytes) -> tuple[bytes, str, int, int]:
    """Encoded bytes, format, height and width of a fully decodable image, as displayed.

    Upright JPEG and PNG bytes are kept as they are; an image with an EXIF orientation is turned
    upright (`sdjax.images.upright`) and re-encoded, as is any other format, as PNG (lossless).
    JPEG data is decoded in full: a JPEG damaged anywhere raises `CorruptImageError`.
    """
    with Image.open(io.BytesIO(data)) as raw:
        raw.load()
        if raw.format == images.JPEG_FORMAT:
            images.verify_jpeg(data)
        image = images.upright(raw)
        if image is raw and raw.format in _KEPT_FORMATS:
            return data, _KEPT_FORMATS[raw.format], raw.height, raw.width
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "PNG")
        return buffer.getvalue(), "png", image.height, image.width


def check_box(
    box: Sequence[float], height: int, width: int, tolerance: float
) -> tuple[tuple[float, float, float, float] | None, Reason | None, str]:
    """The box clipped to the image, or why it is unusable (with a detail for the report)."""
    try:
        if not isinstance(box, list | tuple):
            raise TypeError
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None, Reason.MALFORMED, f"box {box!r} is not 4 numbers"
    if not all(map(math.isfinite, (x0, y0, x1, y1))):
        return None, Reason.MALFORMED, f"box {list(box)} is not finite"
    if x1 < x0 or y1 < y0:
        return None, Reason.BOX_INVERTED, f"box {list(box)} has x1 < x0 or y1 < y0"
    if x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
        return None, Reason.BOX_OUTSIDE, f"box {list(box)} in a {width}x{height} image"
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, Reason.BOX_EMPTY, f"box {list(box)}"
    return clipped, None, ""


def _entity(
    raw: RawEntity,
    image: RawImage,
    size: tuple[int, int],
    options: BuildOptions,
    tokenizer: tok.CLIPTokenizer,
) -> schema.Entity | Skip:
    """One checked and encoded entity, or why it was left out."""

    def skip(reason: Reason, detail: str = "") -> Skip:
        return Skip(reason, image.file, image.record, f"{raw.label!r} {detail}".strip(), True)

    label = raw.label.strip()
    if not label:
        return skip(Reason.MALFORMED, "empty label")
    if options.require_label_in_caption and not label_in_caption(label, image.caption):
        return skip(Reason.LABEL_NOT_IN_CAPTION)
    box, reason, detail = check_box(raw.box, *size, options.box_tolerance)
    if reason is not None:
        return skip(reason, detail)
    mask_png = None
    if raw.mask is not None:
        try:
            mask = np.asarray(raw.mask(*size), bool)
        except MaskError as error:
            return skip(Reason.UNDECODABLE_MASK, str(error))
        if mask.shape != size:
            return skip(Reason.MASK_SIZE, f"mask {mask.shape[::-1]} vs image {size[::-1]} (w, h)")
        mask_png = schema.encode_mask_png(mask)
    return schema.Entity(
        label=label,
        box=box,
        mask_png=mask_png,
        clause_ids=tuple(tok.clause_ids(tokenizer, label)),
        score=float(raw.score),
    )


def build_example(image: RawImage, options: BuildOptions) -> Outcome:
    """The record of one image, applying the per-image checks of the data contract."""

    def skipped(reason: Reason, detail: str = "", *more: Skip) -> Outcome:
        return Outcome(None, (*more, Skip(reason, image.file, image.record, detail)))

    try:
        data = image.load_image()
    except OSError as error:
        return skipped(Reason.UNREADABLE_IMAGE, str(error))
    try:
        encoded, image_format, height, width = read_image(data)
    except IMAGE_ERRORS as error:
        return skipped(Reason.CORRUPT_IMAGE, str(error))
    if not isinstance(image.caption, str) or not image.caption.strip():
        return skipped(Reason.MISSING_CAPTION, repr(image.caption))
    tokenizer = _tokenizer(options.tokenizer_dir)
    results = [
        raw if isinstance(raw, Skip) else _entity(raw, image, (height, width), options, tokenizer)
        for raw in image.entities
    ]
    entities = tuple(r for r in results if isinstance(r, schema.Entity))
    entity_skips = tuple(r for r in results if isinstance(r, Skip))
    if len(entities) < options.min_entities:
        detail = f"{len(entities)} kept, {options.min_entities} needed"
        return skipped(Reason.TOO_FEW_ENTITIES, detail, *entity_skips)
    example = schema.ImageExample(
        key=record_key(image, options),
        image_encoded=encoded,
        image_format=image_format,
        height=height,
        width=width,
        caption=image.caption.strip(),
        caption_ids=tuple(tok.caption_ids(tokenizer, image.caption.strip())),
        entities=entities,
    )
    return Outcome(example, entity_skips)


def process_unit(source: Source, unit: Any, options: BuildOptions) -> Iterator[Outcome]:
    """Outcomes of one unit of a source; with `strict`, bad input raises `InputError`."""
    for item in source.read(unit):
        outcome = Outcome(None, (item,)) if isinstance(item, Skip) else build_example(item, options)
        if options.strict:
            bad = [s for s in outcome.skips if s.reason not in FILTERS]
            if bad:
                raise InputError(bad[0].message())
        yield outcome


def boxes_only(example: schema.ImageExample) -> int:
    """How many entities of the record have a box and no mask."""
    return sum(entity.mask_png is None for entity in example.entities)


@dataclasses.dataclass
class Report:
    """What a build wrote and what it left out, and why."""

    examples: int = 0
    entities: int = 0
    entities_without_mask: int = 0  # of `entities`: annotated with a box only
    skipped_images: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped_entities: dict[str, int] = dataclasses.field(default_factory=dict)
    first_skips: list[str] = dataclasses.field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        if outcome.example is not None:
            self.examples += 1
            self.entities += len(outcome.example.entities)
            self.entities_without_mask += boxes_only(outcome.example)
        for skip in outcome.skips:
            counts = self.skipped_entities if skip.entity else self.skipped_images
            counts[skip.reason.value] = counts.get(skip.reason.value, 0) + 1
            if len(self.first_skips) < _LISTED_SKIPS:
                self.first_skips.append(skip.message())

    def summary(self) -> str:
        lines = [
            f"examples written: {self.examples}",
            f"entities kept: {self.entities} ({self.entities_without_mask} with a box only)",
        ]
        for title, counts in (
            ("images skipped", self.skipped_images),
            ("entities skipped", self.skipped_entities),
        ):
            lines.append(f"{title}: {sum(counts.values())}")
            lines += [f"  {reason}: {n}" for reason, n in sorted(counts.items())]
        if self.first_skips:
            lines.append("first skipped records:")
            lines += [f"  {message}" for message in self.first_skips]
        return "\n".join(lines)
