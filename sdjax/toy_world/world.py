"""The toy world: its vocabulary (classes, looks, backgrounds), scenes, the exact renderer and the
JSON form of evaluation scenes.

A subject has a class (its shape) and a look (a colour and a pattern whose second colour is
white). A scene puts 1-3 subjects of distinct classes in integer pixel boxes (x0, y0, x1, y1;
x1, y1 exclusive) on a named, mildly textured background. Shapes are rasterised at pixel centres
without antialiasing, so every mask is exact: a subject's pixels are its colour or white, and an
unoccluded shape's mask touches all four sides of its box.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

CLASSES = ("circle", "square", "triangle", "star", "heart", "ring")
# Saturated, hue-separated colours, far from each other, from white and from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 40),
    "orange": (250, 130, 10),
    "yellow": (245, 215, 30),
    "green": (0, 200, 80),
    "cyan": (0, 200, 220),
    "blue": (30, 90, 240),
    "purple": (170, 40, 210),
    "pink": (245, 90, 175),
}
PATTERNS = ("solid", "stripes", "dots", "checker")
WHITE = (255, 255, 255)

DEFAULT_IMAGE_SIZE = 64
SUBJECT_COUNTS = (1, 2, 3)  # subjects in a scene, as a world config weights them
DEFAULT_PERIOD = 6  # pixels: stripes 3 on / 3 off, checker squares of 3, a dot every 6
DEFAULT_MIN_SIDE_FRACTION = 0.30
DEFAULT_MAX_SIDE_FRACTION = 0.50
DEFAULT_MAX_ASPECT = 1.4
DEFAULT_MAX_OVERLAP = 0.1
DEFAULT_REFERENCE_MARGIN = 0.05
# The side of a typical world subject, to which a reference image scales its pattern.
TYPICAL_SUBJECT_SIDE = (
    DEFAULT_IMAGE_SIZE * (DEFAULT_MIN_SIDE_FRACTION + DEFAULT_MAX_SIDE_FRACTION) / 2
)

DOT_RADIUS_FRACTION = 0.3  # of the period
RING_INNER_RATIO = 0.5  # inner radius over outer radius
STAR_POINTS = 5
STAR_INNER_RATIO = 0.45  # inner vertices' radius over the tips' radius
# Sampling boxes: tries for one box before the layout starts over.
BOX_TRIES = 50
TEXTURE_SEED_LIMIT = 2**31

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True, order=True)
class Look:
    """A subject's instance look: a COLOURS name and a PATTERNS name."""

    colour: str
    pattern: str


@dataclasses.dataclass(frozen=True)
class Subject:
    """A subject of class `cls` with a look, filling the pixel box (x0, y0, x1, y1), ends exclusive."""

    cls: str
    look: Look
    box: Box


@dataclasses.dataclass(frozen=True)
class Scene:
    """Subjects painted in order on a background; `texture_seed` fixes the background's texture."""

    background: str
    subjects: tuple[Subject, ...]
    texture_seed: int


@dataclasses.dataclass(frozen=True)
class Background:
    """A backdrop: the caption phrase naming it, its base colour and its texture kind."""

    phrase: str
    rgb: tuple[int, int, int]
    texture: str


BACKGROUNDS: dict[str, Background] = {
    "grass": Background("on the grass", (70, 105, 55), "blades"),
    "sand": Background("on the sand", (196, 172, 122), "grain"),
    "wall": Background("on a blue wall", (100, 118, 140), "plaster"),
    "night": Background("at night", (16, 20, 44), "speckles"),
}
# Largest texture offset from a background's base colour, per channel.
TEXTURE_MAX_DEVIATION = 24.0


# ---------------------------------------------------------------------------------------------
# Looks


def all_looks() -> tuple[Look, ...]:
    """Every look, colours major, in the order of COLOURS and PATTERNS."""
    return tuple(Look(colour, pattern) for colour in COLOURS for pattern in PATTERNS)


def _held_out(cls: str) -> frozenset[Look]:
    """A Latin-square choice: class k holds out colour (k + 2j) with pattern j, j < 4."""
    k = CLASSES.index(cls)
    names = tuple(COLOURS)
    return frozenset(
        Look(names[(k + 2 * j) % len(names)], pattern) for j, pattern in enumerate(PATTERNS)
    )


# Each colour and each pattern keeps training looks in every class; each look is held out for at
# most one class, so every held-out look is seen in training on other classes.
HELD_OUT_LOOKS: dict[str, frozenset[Look]] = {cls: _held_out(cls) for cls in CLASSES}


def training_looks(cls: str) -> tuple[Look, ...]:
    """The looks a class shows in training, in `all_looks` order."""
    return tuple(look for look in all_looks() if look not in HELD_OUT_LOOKS[cls])


def held_out_looks(cls: str) -> tuple[Look, ...]:
    """The looks a class never shows in training, in `all_looks` order."""
    return tuple(look for look in all_looks() if look in HELD_OUT_LOOKS[cls])


# ---------------------------------------------------------------------------------------------
# Shapes: regions of a box, rasterised at pixel centres.


@dataclasses.dataclass(frozen=True)
class Grid:
    """Pixel centres over a box: unit coordinates `u`, `v` (the box is [0, 1]², v down) and the
    exact centred offsets `a` = 2x - x0 - x1, `b` = 2y - y0 - y1 of each centre (x, y), with the
    box's `width` and `height` (integers in, exact arithmetic out)."""

    u: np.ndarray
    v: np.ndarray
    a: np.ndarray
    b: np.ndarray
    width: float
    height: float


Region = Callable[[Grid], np.ndarray]
UnitRegion = Callable[[np.ndarray, np.ndarray], np.ndarray]  # of unit coordinates (u, v)


def _inscribed_ellipse(scale: float) -> Region:
    """The ellipse inscribed in the box, scaled about its centre (closed; exact at the rim)."""

    def region(g: Grid) -> np.ndarray:
        return (g.a * g.height) ** 2 + (g.b * g.width) ** 2 <= (scale * g.width * g.height) ** 2

    return region


def _ellipse(cu: float, cv: float, ru: float, rv: float) -> UnitRegion:
    """The closed ellipse centred at (cu, cv) with semi-axes ru, rv, in unit coordinates."""
    return lambda u, v: ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd test of points (u, v) against a closed polygon of (n, 2) vertices."""
    inside = np.zeros(np.broadcast(u, v).shape, bool)
    for (ua, va), (ub, vb) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        crosses = (va > v) != (vb > v)
        dv = vb - va if vb != va else 1.0  # a horizontal edge never crosses
        inside ^= crosses & (u < ua + (v - va) * (ub - ua) / dv)
    return inside


def _unit_box(points: np.ndarray) -> np.ndarray:
    """Points (y up) scaled and flipped so that their bounding box is the unit square, v down."""
    low, high = points.min(axis=0), points.max(axis=0)
    unit = (points - low) / (high - low)
    return np.stack([unit[:, 0], 1.0 - unit[:, 1]], axis=1)


def _star_vertices() -> np.ndarray:
    """A 5-pointed star, one tip up, alternating tips and inner vertices."""
    k = np.arange(2 * STAR_POINTS)
    angle = np.pi / 2 + k * np.pi / STAR_POINTS
    radius = np.where(k % 2 == 0, 1.0, STAR_INNER_RATIO)
    return _unit_box(np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1))


def _heart() -> tuple[Region, np.ndarray]:
    """A square on its tip (the heart's point, down) with a disc on each of its upper sides."""
    s = 1 / math.sqrt(2)  # the unit square's half-diagonal
    diamond = np.array([(0.0, 0.0), (s, s), (0.0, 2 * s), (-s, s)])
    lobe_radius = 0.5
    lobes = np.array([(-s / 2, 1.5 * s), (s / 2, 1.5 * s)])
    half_width, top = s / 2 + lobe_radius, 1.5 * s + lobe_radius
    corners = np.array([(-half_width, 0.0), (half_width, top)])  # the lobes' outer extent
    unit = _unit_box(np.concatenate([diamond, lobes, corners]))
    vertices, centres = unit[:4], unit[4:6]
    ru, rv = lobe_radius / (2 * half_width), lobe_radius / top
    discs = [_ellipse(cu, cv, ru, rv) for cu, cv in centres]

    def region(g: Grid) -> np.ndarray:
        return inside_polygon(g.u, g.v, vertices) | discs[0](g.u, g.v) | discs[1](g.u, g.v)

    return region, vertices


def _polygon(vertices: np.ndarray) -> tuple[Region, np.ndarray]:
    return (lambda g: inside_polygon(g.u, g.v, vertices)), vertices


def _ring(g: Grid) -> np.ndarray:
    return _inscribed_ellipse(1.0)(g) & ~_inscribed_ellipse(RING_INNER_RATIO)(g)


_NO_VERTICES = np.zeros((0, 2))
# Each class: its region, and the polygon vertices whose pixels belong to it (so that sharp tips,
# which may fall between pixel centres, still reach the sides of the box).
SHAPES: dict[str, tuple[Region, np.ndarray]] = {
    "circle": (_inscribed_ellipse(1.0), _NO_VERTICES),
    "square": (lambda g: np.ones(np.broadcast(g.u, g.v).shape, bool), _NO_VERTICES),
    "triangle": _polygon(np.array([(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)])),
    "star": _polygon(_star_vertices()),
    "heart": _heart(),
    "ring": (_ring, _NO_VERTICES),
}


def shape_mask(cls: str, box: Sequence[float], height: int, width: int) -> np.ndarray:
    """(height, width) bool: the class's shape stretched to fill the box, sampled at pixel centres.

    A pixel is inside when its centre is, or when it holds one of the shape's polygon vertices;
    pixels beyond the image are dropped.
    """
    region, vertices = SHAPES[cls]
    x0, y0, x1, y1 = (float(c) for c in box)
    mask = np.zeros((height, width), bool)
    cols = np.arange(max(math.floor(x0), 0), min(math.ceil(x1), width))
    rows = np.arange(max(math.floor(y0), 0), min(math.ceil(y1), height))
    if cols.size == 0 or rows.size == 0:
        return mask
    grid = Grid(
        u=((cols + 0.5 - x0) / (x1 - x0))[None, :],
        v=((rows + 0.5 - y0) / (y1 - y0))[:, None],
        a=(2 * cols + 1 - x0 - x1)[None, :],
        b=(2 * rows + 1 - y0 - y1)[:, None],
        width=x1 - x0,
        height=y1 - y0,
    )
    mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = region(grid)
    for vu, vv in vertices:
        x = min(max(math.floor(x0 + vu * (x1 - x0)), math.floor(x0)), math.ceil(x1) - 1)
        y = min(max(math.floor(y0 + vv * (y1 - y0)), math.floor(y0)), math.ceil(y1) - 1)
        if 0 <= x < width and 0 <= y < height:
            mask[y, x] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Patterns: which pixels of a subject are white, anchored at its box's top-left corner.


def _phase(length: int, start: float) -> np.ndarray:
    """Pixel centres' offsets from `start`."""
    return np.arange(length) + 0.5 - start


def pattern_white(
    pattern: str, box: Sequence[float], height: int, width: int, period: float
) -> np.ndarray:
    """(height, width) bool: the pixels a pattern paints white, for a subject in `box`."""
    tx = _phase(width, box[0])[None, :]
    ty = _phase(height, box[1])[:, None]
    half = period / 2
    if pattern == "solid":
        return np.zeros((height, width), bool)
    if pattern == "stripes":
        return np.broadcast_to(np.floor(ty / half) % 2 == 1, (height, width)).copy()
    if pattern == "checker":
        return (np.floor(tx / half) + np.floor(ty / half)) % 2 == 1
    if pattern == "dots":
        dx, dy = tx % period - half, ty % period - half
        return dx**2 + dy**2 <= (DOT_RADIUS_FRACTION * period) ** 2
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")


def paint(
    image: np.ndarray, mask: np.ndarray, look: Look, box: Sequence[float], period: float
) -> None:
    """Paints the masked pixels of `image` (H, W, 3 uint8) in the look, in place."""
    white = pattern_white(look.pattern, box, image.shape[0], image.shape[1], period)
    image[mask & ~white] = COLOURS[look.colour]
    image[mask & white] = WHITE


# ---------------------------------------------------------------------------------------------
# Backgrounds


def _blades(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grass: fine noise and short vertical blades, lighter or darker."""
    offset = rng.normal(0.0, 4.0, (size, size))
    for _ in range(size * size // 8):
        x, y = rng.integers(0, size, 2)
        length = int(rng.integers(3, 7))
        offset[y : y + length, x] += rng.choice((-12.0, 12.0))
    return offset


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sand: grain noise over soft diagonal ripples."""
    y, x = np.mgrid[0:size, 0:size]
    ripples = 5.0 * np.sin(2 * np.pi * (y + 0.3 * x) / 9.0 + rng.uniform(0, 2 * np.pi))
    return ripples + rng.normal(0.0, 5.0, (size, size))


def _plaster(rng: np.random.Generator, size: int) -> np.ndarray:
    """Wall: smooth blotches and a little grain."""
    blotches = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (size, size)), 2.0, mode="wrap")
    blotches *= 8.0 / max(float(np.abs(blotches).max()), 1e-6)
    return blotches + rng.normal(0.0, 2.0, (size, size))


def _speckles(rng: np.random.Generator, size: int) -> np.ndarray:
    """Night: a gentle vertical gradient and sparse faint stars."""
    gradient = np.linspace(-6.0, 6.0, size)[:, None] * np.ones((1, size))
    stars = (rng.random((size, size)) < 0.01) * 20.0
    return gradient + stars


TEXTURES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "blades": _blades,
    "grain": _grain,
    "plaster": _plaster,
    "speckles": _speckles,
}


def render_background(name: str, size: int, texture_seed: int) -> np.ndarray:
    """(size, size, 3) uint8: the background's base colour with its texture."""
    background = BACKGROUNDS[name]
    rng = np.random.default_rng(texture_seed)
    offset = TEXTURES[background.texture](rng, size)
    offset = np.clip(offset, -TEXTURE_MAX_DEVIATION, TEXTURE_MAX_DEVIATION)[..., None]
    pixels = np.asarray(background.rgb, np.float64) + offset
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Scenes


def render_scene(
    scene: Scene, size: int, period: float = DEFAULT_PERIOD
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The scene's (size, size, 3) uint8 image and each subject's visible (size, size) mask.

    Subjects are painted in order, so a later one occludes an earlier one.
    """
    image = render_background(scene.background, size, scene.texture_seed)
    shapes = [shape_mask(s.cls, s.box, size, size) for s in scene.subjects]
    for subject, mask in zip(scene.subjects, shapes, strict=True):
        paint(image, mask, subject.look, subject.box, period)
    visible = []
    covered = np.zeros((size, size), bool)
    for mask in reversed(shapes):
        visible.append(mask & ~covered)
        covered |= mask
    return image, visible[::-1]


def reference_box(size: int, margin_fraction: float) -> Box:
    """The square box a reference image draws its subject in."""
    margin = round(size * margin_fraction)
    return (margin, margin, size - margin, size - margin)


def render_reference(
    subject_class: str,
    look: Look,
    size: int,
    margin_fraction: float = DEFAULT_REFERENCE_MARGIN,
    world_period: float = DEFAULT_PERIOD,
) -> np.ndarray:
    """(size, size, 3) uint8: the subject alone on a white canvas, `margin_fraction` from each side.

    The pattern's period is the world's (`world_period`, pixels) scaled from a typical world
    subject's side to this subject's side, so it repeats across the subject as often as in a
    world image.
    """
    box = reference_box(size, margin_fraction)
    side = box[2] - box[0]
    period = world_period * side / TYPICAL_SUBJECT_SIDE
    image = np.full((size, size, 3), WHITE, np.uint8)
    paint(image, shape_mask(subject_class, box, size, size), look, box, period)
    return image


def overlap_over_smaller(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection area of two boxes over the smaller box's area."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller


def sample_box(
    rng: np.random.Generator,
    size: int,
    min_side_fraction: float,
    max_side_fraction: float,
    max_aspect: float,
) -> Box:
    """A box inside the image with sides in the given fractions of it and a bounded aspect."""
    while True:
        width, height = np.round(rng.uniform(min_side_fraction, max_side_fraction, 2) * size)
        width, height = int(width), int(height)
        if max(width, height) <= max_aspect * min(width, height):
            break
    x0 = int(rng.integers(0, size - width + 1))
    y0 = int(rng.integers(0, size - height + 1))
    return (x0, y0, x0 + width, y0 + height)


def sample_layout(
    rng: np.random.Generator,
    count: int,
    size: int,
    min_side_fraction: float,
    max_side_fraction: float,
    max_aspect: float,
    max_overlap: float,
) -> tuple[Box, ...]:
    """`count` boxes whose pairwise overlap (over the smaller box) is at most `max_overlap`."""
    while True:
        boxes: list[Box] = []
        for _ in range(BOX_TRIES * count):
            box = sample_box(rng, size, min_side_fraction, max_side_fraction, max_aspect)
            if all(overlap_over_smaller(box, other) <= max_overlap for other in boxes):
                boxes.append(box)
                if len(boxes) == count:
                    return tuple(boxes)


def sample_scene(
    rng: np.random.Generator,
    num_subjects: int,
    size: int,
    *,
    held_out: bool = False,
    min_side_fraction: float = DEFAULT_MIN_SIDE_FRACTION,
    max_side_fraction: float = DEFAULT_MAX_SIDE_FRACTION,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    max_overlap: float = DEFAULT_MAX_OVERLAP,
) -> Scene:
    """A random scene: distinct classes, a random background, training (or held-out) looks."""
    if not 1 <= num_subjects <= len(CLASSES):
        raise ValueError(f"num_subjects must be in 1..{len(CLASSES)}, got {num_subjects}")
    classes = [CLASSES[i] for i in rng.choice(len(CLASSES), num_subjects, replace=False)]
    names = tuple(BACKGROUNDS)
    background = names[int(rng.integers(len(names)))]
    boxes = sample_layout(
        rng, num_subjects, size, min_side_fraction, max_side_fraction, max_aspect, max_overlap
    )
    looks_of = held_out_looks if held_out else training_looks
    subjects = []
    for cls, box in zip(classes, boxes, strict=True):
        looks = looks_of(cls)
        subjects.append(Subject(cls, looks[int(rng.integers(len(looks)))], box))
    return Scene(background, tuple(subjects), int(rng.integers(TEXTURE_SEED_LIMIT)))


def configured_scene(
    rng: np.random.Generator, world_cfg: Any, held_out: bool, count: int | None = None
) -> Scene:
    """A scene laid out as a `world` config section says (image size, box sides, aspect,
    overlap): `count` subjects, or a count drawn with its `subjects_weights` over SUBJECT_COUNTS."""
    if count is None:
        weights = np.asarray(world_cfg.subjects_weights, np.float64)
        count = int(rng.choice(SUBJECT_COUNTS, p=weights / weights.sum()))
    return sample_scene(
        rng,
        count,
        world_cfg.image_size,
        held_out=held_out,
        min_side_fraction=world_cfg.min_side_fraction,
        max_side_fraction=world_cfg.max_side_fraction,
        max_aspect=world_cfg.max_aspect,
        max_overlap=world_cfg.max_overlap,
    )


def _with_article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def caption(scene: Scene) -> str:
    """The scene's caption, class nouns only: "a circle, a star and a ring on a blue wall"."""
    nouns = [_with_article(s.cls) for s in scene.subjects]
    listed = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]
    return f"{listed} {BACKGROUNDS[scene.background].phrase}"


# ---------------------------------------------------------------------------------------------
# Evaluation scenes as JSON


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Held-out evaluation scenes by number of subjects, and how to render them."""

    image_size: int
    pattern_period: float
    scenes: dict[int, list[Scene]]


def scene_to_json(scene: Scene) -> dict:
    """The scene as plain JSON values."""
    return {
        "background": scene.background,
        "texture_seed": scene.texture_seed,
        "subjects": [
            {
                "class": s.cls,
                "colour": s.look.colour,
                "pattern": s.look.pattern,
                "box": list(s.box),
            }
            for s in scene.subjects
        ],
    }


def scene_from_json(item: dict) -> Scene:
    """The inverse of `scene_to_json`."""
    subjects = tuple(
        Subject(s["class"], Look(s["colour"], s["pattern"]), tuple(int(c) for c in s["box"]))
        for s in item["subjects"]
    )
    return Scene(item["background"], subjects, int(item["texture_seed"]))


def write_eval_file(path: str | Path, eval_set: EvalSet) -> None:
    """Writes the evaluation set as JSON (deterministic bytes)."""
    content = {
        "image_size": eval_set.image_size,
        "pattern_period": eval_set.pattern_period,
        "scenes": {
            str(count): [scene_to_json(s) for s in scenes]
            for count, scenes in sorted(eval_set.scenes.items())
        },
    }
    Path(path).write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")


def read_eval_file(path: str | Path) -> EvalSet:
    """The evaluation set written by `write_eval_file`."""
    content = json.loads(Path(path).read_text())
    scenes = {
        int(count): [scene_from_json(s) for s in items]
        for count, items in content["scenes"].items()
    }
    return EvalSet(content["image_size"], content["pattern_period"], scenes)


def load_eval_scenes(path: str | Path) -> dict[int, list[Scene]]:
    """Evaluation scenes by number of subjects (1, 2, 3)."""
    return read_eval_file(path).scenes
