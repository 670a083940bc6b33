"""Reads a generated toy-world image and says, for each requested subject, whether it is in its
box with the requested class, colour and pattern, and whether the background is the requested one.

The method, robust to blur and to slight colour shifts:
1. Background: the median colour of the pixels outside every requested box; its name is the
   nearest background base colour (CIE Lab distance).
2. Foreground: pixels far (RGB distance) from that median, opened with a small square to drop
   specks and thin bridges; the pixels the opening removed are given back to the component they
   touch. Connected components are the candidate subjects. A component that covers a good share
   of several requested boxes (touching subjects) is split by colour, and a piece still covering
   several boxes is split between the boxes.
3. Per request: the component overlapping its box the most. Located iff the IoU of that
   component's bounding box with the requested box is at least LOCATED_IOU.
4. Class: the component's mask, holes filled except where background shows through (the ring's
   hole), against each class's shape drawn into the component's bounding box (or that box grown
   by up to SHAPE_GROWTH pixels a side, for tips lost to blur); the best IoU wins. Pixels of
   other components are left out of the comparison (occlusion).
5. Colour: the median of the component's most saturated pixels, nearest COLOURS entry in CIE
   Lab.
6. Pattern: the whiteness of each pixel of the component's interior (where it falls between the
   subject's colour, 0, and white, 1). Little white: solid. Otherwise the share of the
   whiteness variance explained by the pixel's row (or column): stripes explain nearly all of it
   by rows; dots, blobs on a grid, a fair share along both axes; a checker almost none.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from sdjax.toy_world.world import BACKGROUNDS, CLASSES, COLOURS, WHITE, Look, Scene, shape_mask

# Foreground: RGB distance from the background's median colour.
FOREGROUND_DISTANCE = 50.0
OPENING = np.ones((3, 3), bool)
# Pixels removed by the opening that a component takes back: up to this many steps away.
RECOVERY_STEPS = 2
MIN_COMPONENT_PIXELS = 12
# The background median needs at least this share of the image outside the boxes (else: all).
MIN_OUTSIDE_SHARE = 0.1
LOCATED_IOU = 0.5
# Class matching also tries the component's box grown by up to this many pixels a side (a shape's
# thin tips may fade below the foreground threshold under blur).
SHAPE_GROWTH = 2
# A component covering this share of two or more requested boxes is split (touching subjects).
SPAN_SHARE = 0.2
# HSV saturation from which a pixel counts as coloured rather than white (or grey).
CHROMATIC_MIN_SATURATION = 0.35
# A subject's colour: the median of its pixels at least as saturated as this quantile of them
# (the cores of its coloured parts, not their blurred edges towards white).
COLOUR_SATURATION_QUANTILE = 0.75
# Pattern decision on the whiteness (0: the subject's colour, 1: white) of its interior: mean
# whiteness below which it is solid; row (or column) correlation ratio from which it is striped;
# correlation ratio along both axes from which it is dotted; else checker.
SOLID_MAX_WHITE = 0.15
STRIPES_MIN_ETA = 0.75
DOTS_MIN_ETA = 0.22

PixelBox = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class Request:
    """A subject asked for: its class, its look and its box in pixels (x0, y0, x1, y1)."""

    cls: str
    look: Look
    box: Sequence[float]


@dataclasses.dataclass(frozen=True)
class SubjectResult:
    """What the image shows for one request; the `*_ok` flags compare it with the request."""

    located: bool
    iou: float
    detected_box: PixelBox | None
    cls_ok: bool
    colour_ok: bool
    pattern_ok: bool
    identity_ok: bool  # colour_ok and pattern_ok
    detected_class: str | None
    detected_colour: str | None
    detected_pattern: str | None
    # the colour found is another requested subject's, not this one's: a look in the wrong box
    other_colour: bool = False
    line_share: float | None = None  # how striped the subject is drawn (`DetectedLook`)

    @property
    def all_ok(self) -> bool:
        """Located, of the right class and with the right look."""
        return self.located and self.cls_ok and self.identity_ok


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """Per-request results, and whether the background is the requested one."""

    subjects: tuple[SubjectResult, ...]
    scene_ok: bool
    detected_background: str


@dataclasses.dataclass(frozen=True)
class Component:
    """A candidate subject: its pixels and their bounding box."""

    mask: np.ndarray
    box: PixelBox


# ---------------------------------------------------------------------------------------------
# Colour


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of sRGB values in [0, 255], shape (..., 3)."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def nearest_name(rgb: np.ndarray, palette: dict[str, Sequence[int]]) -> str:
    """The palette entry nearest to an RGB colour in CIE Lab."""
    names = list(palette)
    distances = np.linalg.norm(srgb_to_lab([palette[n] for n in names]) - srgb_to_lab(rgb), axis=-1)
    return names[int(np.argmin(distances))]


def saturation(pixels: np.ndarray) -> np.ndarray:
    """HSV saturation of (..., 3) RGB values."""
    high = pixels.max(axis=-1)
    return (high - pixels.min(axis=-1)) / np.maximum(high, 1e-6)


def whiteness(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Where each pixel falls on the line from `colour` (0) to white (1)."""
    direction = np.asarray(WHITE, np.float64) - colour
    return (pixels - colour) @ direction / max(float(direction @ direction), 1e-6)


# ---------------------------------------------------------------------------------------------
# Boxes and components


def pixel_window(box: Sequence[float], height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels a box covers, clipped to the image."""
    x0, y0 = max(math.floor(box[0]), 0), max(math.floor(box[1]), 0)
    x1, y1 = min(math.ceil(box[2]), width), min(math.ceil(box[3]), height)
    return slice(y0, max(y1, y0)), slice(x0, max(x1, x0))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes."""
    width = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    height = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def bounding_box(mask: np.ndarray) -> PixelBox:
    """(x0, y0, x1, y1) of a non-empty mask, ends exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def box_regions(boxes: Sequence[Sequence[float]], height: int, width: int) -> list[np.ndarray]:
    """One (height, width) mask per box of the pixels it covers."""
    regions = []
    for box in boxes:
        region = np.zeros((height, width), bool)
        region[pixel_window(box, height, width)] = True
        regions.append(region)
    return regions


def background_colour(pixels: np.ndarray, regions: list[np.ndarray]) -> np.ndarray:
    """Median colour of the pixels outside every box (of all pixels when too few are outside)."""
    outside = ~np.logical_or.reduce(regions) if regions else np.ones(pixels.shape[:2], bool)
    if outside.mean() < MIN_OUTSIDE_SHARE:
        outside = np.ones(pixels.shape[:2], bool)
    return np.median(pixels[outside], axis=0)


def split_by_colour(pixels: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """A mask's connected pieces of one colour each; white pixels join the nearest coloured one."""
    chromatic = mask & (saturation(pixels) >= CHROMATIC_MIN_SATURATION)
    if not chromatic.any():
        return [mask]
    names = list(COLOURS)
    palette = srgb_to_lab([COLOURS[n] for n in names])
    labels = np.full(mask.shape, -1)
    lab = srgb_to_lab(pixels[chromatic])
    labels[chromatic] = np.argmin(np.linalg.norm(lab[:, None] - palette[None], axis=-1), axis=1)
    _, (rows, cols) = ndimage.distance_transform_edt(~chromatic, return_indices=True)
    labels = np.where(mask, labels[rows, cols], -1)
    pieces = []
    for value in np.unique(labels[mask]):
        parts, count = ndimage.label(labels == value)
        pieces += [parts == i for i in range(1, count + 1)]
    return pieces


def split_by_boxes(mask: np.ndarray, regions: list[np.ndarray]) -> list[np.ndarray]:
    """A mask's pixels shared out among boxes: each goes to the nearest box (distance 0 inside)."""
    distances = np.stack([ndimage.distance_transform_edt(~region) for region in regions])
    owner = np.argmin(distances, axis=0)
    return [mask & (owner == i) for i in range(len(regions))]


def spanned(mask: np.ndarray, regions: list[np.ndarray]) -> list[np.ndarray]:
    """The boxes of which the mask covers at least SPAN_SHARE."""
    return [r for r in regions if r.any() and (mask & r).sum() >= SPAN_SHARE * r.sum()]


def separate(pixels: np.ndarray, mask: np.ndarray, regions: list[np.ndarray]) -> list[np.ndarray]:
    """A component split into subjects when it spans several boxes (see the module doc)."""
    if len(spanned(mask, regions)) < 2:
        return [mask]
    pieces = []
    for piece in split_by_colour(pixels, mask):
        boxes = spanned(piece, regions)
        pieces += split_by_boxes(piece, boxes) if len(boxes) >= 2 else [piece]
    return pieces


def find_components(
    pixels: np.ndarray, foreground: np.ndarray, regions: list[np.ndarray]
) -> list[Component]:
    """Candidate subjects: opened foreground components, split where they span several boxes."""
    opened = ndimage.binary_opening(foreground, structure=OPENING)
    removed = foreground & ~opened
    labels, count = ndimage.label(opened)
    components = []
    for index in range(1, count + 1):
        for piece in separate(pixels, labels == index, regions):
            regained = ndimage.binary_dilation(piece, iterations=RECOVERY_STEPS, mask=removed)
            mask = piece | regained
            if mask.sum() >= MIN_COMPONENT_PIXELS:
                components.append(Component(mask, bounding_box(mask)))
    return components


# ---------------------------------------------------------------------------------------------
# Class, colour, pattern


def grown(box: PixelBox, margin: int, height: int, width: int) -> PixelBox:
    """The box with `margin` pixels more on every side, clipped to the image."""
    x0, y0, x1, y1 = box
    return (
        max(x0 - margin, 0),
        max(y0 - margin, 0),
        min(x1 + margin, width),
        min(y1 + margin, height),
    )


def classify_shape(
    mask: np.ndarray, box: PixelBox, ignored: np.ndarray, foreground: np.ndarray
) -> str:
    """The class whose shape, drawn into `box` or a slightly grown box (tips lost to blur), best
    matches the mask: highest IoU, the `ignored` pixels left out."""
    height, width = mask.shape
    counted = ~ignored
    seen = (mask | (ndimage.binary_fill_holes(mask) & foreground)) & counted
    boxes = [grown(box, margin, height, width) for margin in range(SHAPE_GROWTH + 1)]
    scores = []
    for cls in CLASSES:
        best = 0.0
        for candidate in boxes:
            shape = shape_mask(cls, candidate, height, width) & counted
            best = max(best, (shape & seen).sum() / max((shape | seen).sum(), 1))
        scores.append(best)
    return CLASSES[int(np.argmax(scores))]


def correlation_ratio(values: np.ndarray, region: np.ndarray, axis: int) -> float:
    """Share of the variance of `values` over `region` explained by the line (row: axis=1)."""
    counts = region.sum(axis=axis)
    lines = counts > 0
    mean = values[region].mean()
    total = ((values[region] - mean) ** 2).mean()
    if total <= 0:
        return 0.0
    means = np.where(region, values, 0.0).sum(axis=axis)[lines] / counts[lines]
    between = (counts[lines] * (means - mean) ** 2).sum() / counts.sum()
    return float(between / total)


def line_ratios(white: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """Shares of the whiteness variance over `region` explained by rows and by columns."""
    return correlation_ratio(white, region, axis=1), correlation_ratio(white, region, axis=0)


def pattern_name(mean_white: float, by_rows: float, by_cols: float) -> str:
    """solid, stripes, dots or checker from a subject's mean whiteness and `line_ratios` (see the
    module doc)."""
    if mean_white < SOLID_MAX_WHITE:
        return "solid"
    if max(by_rows, by_cols) >= STRIPES_MIN_ETA:
        return "stripes"
    if min(by_rows, by_cols) >= DOTS_MIN_ETA:
        return "dots"
    return "checker"


def interior(mask: np.ndarray) -> np.ndarray:
    """The mask less its boundary, where that leaves at least half of it (blurred edges)."""
    inner = ndimage.binary_erosion(mask)
    return inner if inner.sum() * 2 >= mask.sum() else mask


@dataclasses.dataclass(frozen=True)
class DetectedLook:
    """What a component shows: its colour and pattern names, and how striped it is."""

    colour: str | None
    pattern: str | None
    # how striped: the larger of its interior's `line_ratios`, 1 for clean stripes, near 0 for a
    # checker (`STRIPES_MIN_ETA` reads stripes)
    line_share: float | None


def classify_look(pixels: np.ndarray, mask: np.ndarray) -> DetectedLook:
    """The look of a component; all None when it has no saturated pixels."""
    saturations = saturation(pixels)
    chromatic = mask & (saturations >= CHROMATIC_MIN_SATURATION)
    if not chromatic.any():
        return DetectedLook(None, None, None)
    cores = chromatic & (
        saturations >= np.quantile(saturations[chromatic], COLOUR_SATURATION_QUANTILE)
    )
    colour = np.median(pixels[cores], axis=0)
    white = np.clip(whiteness(pixels, colour), 0.0, 1.0)
    region = interior(mask)
    ratios = line_ratios(white, region)
    pattern = pattern_name(white[region].mean(), *ratios)
    return DetectedLook(nearest_name(colour, COLOURS), pattern, max(ratios))


# ---------------------------------------------------------------------------------------------
# Evaluation


def _missing() -> SubjectResult:
    return SubjectResult(False, 0.0, None, False, False, False, False, None, None, None)


def evaluate_request(
    request: Request,
    region: np.ndarray,
    components: list[Component],
    pixels: np.ndarray,
    foreground: np.ndarray,
    other_colours: set[str],
) -> SubjectResult:
    """The result of one request, from the component that overlaps its box the most;
    `other_colours` are the other requested subjects' colours (not this one's)."""
    overlaps = [int((c.mask & region).sum()) for c in components]
    if not overlaps or max(overlaps) == 0:
        return _missing()
    best = components[int(np.argmax(overlaps))]
    iou = box_iou(best.box, request.box)
    others = [c.mask for c in components if c is not best]
    ignored = np.logical_or.reduce(others) & ~best.mask if others else np.zeros_like(best.mask)
    cls = classify_shape(best.mask, best.box, ignored, foreground)
    look = classify_look(pixels, best.mask)
    colour_ok = look.colour == request.look.colour
    pattern_ok = look.pattern == request.look.pattern
    return SubjectResult(
        located=iou >= LOCATED_IOU,
        iou=iou,
        detected_box=best.box,
        cls_ok=cls == request.cls,
        colour_ok=colour_ok,
        pattern_ok=pattern_ok,
        identity_ok=colour_ok and pattern_ok,
        detected_class=cls,
        detected_colour=look.colour,
        detected_pattern=look.pattern,
        other_colour=look.colour in other_colours,
        line_share=look.line_share,
    )


def evaluate_image(image: np.ndarray, requests: Sequence[Request], background: str) -> ImageResult:
    """Checks a (H, W, 3) uint8 image against the requested subjects and background."""
    pixels = np.asarray(image, np.float64)[..., :3]
    height, width = pixels.shape[:2]
    regions = box_regions([r.box for r in requests], height, width)
    median = background_colour(pixels, regions)
    detected = nearest_name(median, {name: b.rgb for name, b in BACKGROUNDS.items()})
    foreground = np.linalg.norm(pixels - median, axis=-1) > FOREGROUND_DISTANCE
    components = find_components(pixels, foreground, regions)
    colours = {r.look.colour for r in requests}
    subjects = tuple(
        evaluate_request(r, region, components, pixels, foreground, colours - {r.look.colour})
        for r, region in zip(requests, regions, strict=True)
    )
    return ImageResult(subjects, detected == background, detected)


def requests_of(scene: Scene) -> list[Request]:
    """The requests a scene makes: each subject's class, look and box."""
    return [Request(s.cls, s.look, s.box) for s in scene.subjects]


def evaluate_scene(image: np.ndarray, scene: Scene) -> ImageResult:
    """Checks an image generated for `scene` against it."""
    return evaluate_image(image, requests_of(scene), scene.background)


def summarise(results: Sequence[ImageResult]) -> dict[str, float]:
    """Shares over all requested subjects (location, identity, colour, pattern, class, all of
    them together as `subject`, the colour of another requested subject as `other_colour`) and
    over images (scene)."""
    subjects = [s for r in results for s in r.subjects]

    def share(values: list[bool]) -> float:
        return float(np.mean(values)) if values else 0.0

    return {
        "location": share([s.located for s in subjects]),
        "identity": share([s.identity_ok for s in subjects]),
        "colour": share([s.colour_ok for s in subjects]),
        "pattern": share([s.pattern_ok for s in subjects]),
        "class": share([s.cls_ok for s in subjects]),
        "subject": share([s.all_ok for s in subjects]),
        "other_colour": share([s.other_colour for s in subjects]),
        "scene": share([r.scene_ok for r in results]),
    }


def pattern_confusion(
    scenes: Sequence[Scene], results: Sequence[ImageResult]
) -> dict[str, dict[str, int]]:
    """{requested pattern: {pattern read: count}} over every requested subject ("none": no look
    was found in its box): which patterns a model draws as which."""
    counts: dict[str, dict[str, int]] = {}
    for scene, result in zip(scenes, results, strict=True):
        for subject, found in zip(scene.subjects, result.subjects, strict=True):
            row = counts.setdefault(subject.look.pattern, {})
            read = found.detected_pattern or "none"
            row[read] = row.get(read, 0) + 1
    return counts


def stripes_line_shares(scenes: Sequence[Scene], results: Sequence[ImageResult]) -> list[float]:
    """`line_share` of every subject found for a striped request, in order: how close to
    stripes the model draws them (read as stripes from `STRIPES_MIN_ETA`)."""
    return [
        found.line_share
        for scene, result in zip(scenes, results, strict=True)
        for subject, found in zip(scene.subjects, result.subjects, strict=True)
        if subject.look.pattern == "stripes" and found.line_share is not None
    ]
