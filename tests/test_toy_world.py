"""The toy world: exact renders, the generated records and evaluation set, and the evaluator."""

import dataclasses
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import ndimage

from configs.toy_world import world_config
from data.toy_world import generate_world
from sdjax.input_pipeline import pipeline, schema
from sdjax.stages import MARKER
from sdjax.toy_world import benchmark
from sdjax.toy_world import evaluate as ev
from sdjax.toy_world import world as w

REPO = Path(__file__).resolve().parents[1]
SIZE = w.DEFAULT_IMAGE_SIZE
NUM_IMAGES = 24
NUM_EVAL = 4
GROUND_TRUTH_SCENES = 100  # per number of subjects: 300 images in all
WRONG_RENDERS = 150  # per kind of mistake
REQUIRED_ACCURACY = 0.98
REQUIRED_CATCH_RATE = 0.95


def _small_world(seed: int = 0):
    config = world_config()
    config.seed = seed
    config.num_images = NUM_IMAGES
    config.num_eval = NUM_EVAL
    config.num_shards = 2
    return config


def _bytes(files) -> list[bytes]:
    return [Path(f).read_bytes() for f in files]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    directory = tmp_path_factory.mktemp("world")
    return directory, generate_world(_small_world(), directory)


def _scenes(seed: int, count: int, held_out: bool = True) -> list[w.Scene]:
    rng = np.random.default_rng(seed)
    return [w.sample_scene(rng, 1 + i % 3, SIZE, held_out=held_out) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Vocabulary


def test_held_out_looks_leave_every_colour_and_pattern_in_training():
    held_out_sets = set()
    for cls in w.CLASSES:
        held, train = set(w.held_out_looks(cls)), set(w.training_looks(cls))
        assert len(held) == 4 and held == w.HELD_OUT_LOOKS[cls]
        assert held.isdisjoint(train) and len(held | train) == len(w.COLOURS) * len(w.PATTERNS)
        assert {look.colour for look in train} == set(w.COLOURS)
        assert {look.pattern for look in train} == set(w.PATTERNS)
        held_out_sets.add(frozenset(held))
    assert len(held_out_sets) == len(w.CLASSES)  # a different choice per class
    for cls in w.CLASSES:  # every held-out look is seen in training on the other classes
        for look in w.held_out_looks(cls):
            assert all(look in w.training_looks(other) for other in w.CLASSES if other != cls)


def test_backgrounds_are_dark_enough_and_far_from_every_subject_colour():
    subject_colours = np.array([*w.COLOURS.values(), w.WHITE], np.float64)
    for name, background in w.BACKGROUNDS.items():
        image = w.render_background(name, SIZE, texture_seed=3).astype(np.float64)
        assert not (image >= 0.9 * 255).all(axis=-1).any(), name
        assert image.std(axis=(0, 1)).max() > 1.0, f"{name} has no texture"
        assert np.linalg.norm(image - background.rgb, axis=-1).max() < ev.FOREGROUND_DISTANCE
        distances = np.linalg.norm(subject_colours - background.rgb, axis=-1)
        assert distances.min() >= 2 * ev.FOREGROUND_DISTANCE, name


def test_subject_colours_are_far_apart():
    lab = ev.srgb_to_lab(list(w.COLOURS.values()))
    distances = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    assert distances[~np.eye(len(lab), dtype=bool)].min() > 35.0


def test_captions_name_the_classes_and_the_background():
    def scene(background, *classes):
        look = w.Look("red", "solid")
        return w.Scene(background, tuple(w.Subject(c, look, (0, 0, 20, 20)) for c in classes), 0)

    assert w.caption(scene("sand", "star")) == "a star on the sand"
    assert w.caption(scene("night", "star", "heart")) == "a star and a heart at night"
    assert (
        w.caption(scene("wall", "circle", "star", "ring"))
        == "a circle, a star and a ring on a blue wall"
    )
    assert w.caption(scene("grass", "square")) == "a square on the grass"


def test_sampled_scenes_follow_the_layout_rules():
    rng = np.random.default_rng(0)
    low, high = round(w.DEFAULT_MIN_SIDE_FRACTION * SIZE), round(w.DEFAULT_MAX_SIDE_FRACTION * SIZE)
    for i in range(300):
        held_out = i % 2 == 0
        scene = w.sample_scene(rng, 1 + i % 3, SIZE, held_out=held_out)
        assert len(scene.subjects) == 1 + i % 3 and scene.background in w.BACKGROUNDS
        assert len({s.cls for s in scene.subjects}) == len(scene.subjects)
        for s in scene.subjects:
            x0, y0, x1, y1 = s.box
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            assert low <= x1 - x0 <= high and low <= y1 - y0 <= high
            assert max(x1 - x0, y1 - y0) <= w.DEFAULT_MAX_ASPECT * min(x1 - x0, y1 - y0)
            looks = w.held_out_looks(s.cls) if held_out else w.training_looks(s.cls)
            assert s.look in looks
        for a in scene.subjects:
            for b in scene.subjects:
                if a is not b:
                    assert w.overlap_over_smaller(a.box, b.box) <= w.DEFAULT_MAX_OVERLAP


# ---------------------------------------------------------------------------------------------
# Shapes and renders


def test_circle_square_and_ring_masks_match_plain_formulas():
    """Integer arithmetic on doubled pixel-centre offsets: exact, ties included."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    for _ in range(200):
        box = w.sample_box(rng, SIZE, 0.1, 0.6, 2.0)
        x0, y0, x1, y1 = box
        square = (x0 <= x) & (x < x1) & (y0 <= y) & (y < y1)
        np.testing.assert_array_equal(w.shape_mask("square", box, SIZE, SIZE), square)
        width, height = x1 - x0, y1 - y0
        # (2 (x + 1/2) - x0 - x1) / width is the centre's offset in half-widths.
        radial = ((2 * x + 1 - x0 - x1) * height) ** 2 + ((2 * y + 1 - y0 - y1) * width) ** 2
        circle = radial <= (width * height) ** 2
        np.testing.assert_array_equal(w.shape_mask("circle", box, SIZE, SIZE), circle)
        assert w.RING_INNER_RATIO == 0.5
        ring = circle & ~(4 * radial <= (width * height) ** 2)
        np.testing.assert_array_equal(w.shape_mask("ring", box, SIZE, SIZE), ring)


def test_every_shape_reaches_the_four_sides_of_its_box():
    rng = np.random.default_rng(2)
    for i in range(300):
        cls = w.CLASSES[i % len(w.CLASSES)]
        box = w.sample_box(rng, SIZE, 0.2, 0.6, 1.6)
        mask = w.shape_mask(cls, box, SIZE, SIZE)
        assert ev.bounding_box(mask) == box, cls
        assert 0.3 < mask.sum() / ((box[2] - box[0]) * (box[3] - box[1])) <= 1.0, cls


def test_patterns_have_the_period():
    box, period = (0, 0, 12, 12), 6
    stripes = w.pattern_white("stripes", box, 12, 12, period)
    assert stripes[:, 0].tolist() == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3
    assert np.all(stripes == stripes[:, :1])  # rows are uniform
    checker = w.pattern_white("checker", box, 12, 12, period)
    assert checker[0].tolist() == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3
    np.testing.assert_array_equal(checker[3:6], ~checker[0:3])
    dots = w.pattern_white("dots", box, 12, 12, period)
    np.testing.assert_array_equal(dots[:6, :6], dots[6:, 6:])
    assert 0.2 < dots.mean() < 0.4 and not dots[0].any() and not dots[:, 0].any()
    assert not w.pattern_white("solid", box, 12, 12, period).any()


def test_masks_agree_with_the_rendered_pixels():
    for scene in _scenes(seed=3, count=150, held_out=False):
        image, masks = w.render_scene(scene, SIZE)
        backdrop = w.render_background(scene.background, SIZE, scene.texture_seed)
        covered = np.zeros((SIZE, SIZE), bool)
        for index, (subject, mask) in enumerate(zip(scene.subjects, masks, strict=True)):
            assert mask.any() and not (mask & covered).any()  # visible masks are disjoint
            covered |= mask
            x0, y0, x1, y1 = subject.box
            assert mask[y0:y1, x0:x1].sum() == mask.sum()  # inside the box
            pixels = image[mask]
            is_colour = np.all(pixels == w.COLOURS[subject.look.colour], axis=-1)
            assert np.all(is_colour | np.all(pixels == w.WHITE, axis=-1))
            shape = w.shape_mask(subject.cls, subject.box, SIZE, SIZE)
            later = [w.shape_mask(s.cls, s.box, SIZE, SIZE) for s in scene.subjects[index + 1 :]]
            occluders = np.logical_or.reduce([np.zeros_like(shape), *later])
            np.testing.assert_array_equal(mask, shape & ~occluders)
            if not any((shape & other).any() for other in later):
                assert ev.bounding_box(mask) == subject.box
        np.testing.assert_array_equal(image[~covered], backdrop[~covered])


@pytest.mark.parametrize("world_period", [w.DEFAULT_PERIOD, 10])
def test_reference_image_is_the_subject_alone_on_white(world_period):
    look = w.Look("blue", "stripes")
    image = w.render_reference("heart", look, 96, margin_fraction=0.1, world_period=world_period)
    box = w.reference_box(96, 0.1)
    mask = w.shape_mask("heart", box, 96, 96)
    assert np.all(image[~mask] == 255)
    assert np.all(image[mask] == w.COLOURS["blue"], axis=-1).mean() > 0.3
    solid = w.render_reference("heart", w.Look("blue", "solid"), 96, margin_fraction=0.1)
    assert ev.bounding_box(np.any(solid != 255, axis=-1)) == box
    # The stripes repeat across the subject as often as across a typical world subject.
    side, period = box[2] - box[0], 2 * np.diff(np.flatnonzero(np.diff(image[:, 48, 0]))).max()
    assert side / period == pytest.approx(w.TYPICAL_SUBJECT_SIDE / world_period, rel=0.2)


# ---------------------------------------------------------------------------------------------
# The generated world


def test_same_seed_gives_identical_records_and_eval_file(world, tmp_path):
    _, files = world
    again = generate_world(_small_world(), tmp_path)
    assert len(files.record_files) == 2
    assert _bytes(again.record_files) == _bytes(files.record_files)
    assert again.eval_file.read_bytes() == files.eval_file.read_bytes()
    other = generate_world(_small_world(seed=1), tmp_path / "other")
    assert _bytes(other.record_files) != _bytes(files.record_files)


def test_a_finished_world_is_reused_and_a_corrupt_shard_rebuilt(world, tmp_path):
    directory, files = world
    marker = directory / "world" / MARKER
    before = marker.stat().st_mtime_ns
    assert generate_world(_small_world(), directory) == files
    assert marker.stat().st_mtime_ns == before  # reused, not rebuilt
    shutil.copytree(directory / "world", tmp_path / "world")
    copy = generate_world(_small_world(), tmp_path)
    shard = Path(copy.record_files[0])
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rebuilt = generate_world(_small_world(), tmp_path)
    assert _bytes(rebuilt.record_files) == _bytes(files.record_files)


def _decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _look_of(image: np.ndarray, mask: np.ndarray, box) -> w.Look:
    """The look a subject's exact pixels show: its colour, and the pattern its white pixels draw."""
    pixels = image[mask]
    coloured = pixels[~np.all(pixels == w.WHITE, axis=-1)]
    colour = next(n for n, rgb in w.COLOURS.items() if np.all(coloured == rgb))
    white = np.all(image == w.WHITE, axis=-1) & mask
    pattern = next(
        p
        for p in w.PATTERNS
        if np.array_equal(w.pattern_white(p, box, *mask.shape, w.DEFAULT_PERIOD) & mask, white)
    )
    return w.Look(colour, pattern)


def test_records_hold_training_looks_only(world):
    _, files = world
    records = [schema.decode_example_py(r) for r in _read_raw_records(files.record_files)]
    assert len(records) == NUM_IMAGES
    for record in records:
        image = _decode_png(record.image_encoded)
        assert image.shape == (SIZE, SIZE, 3)
        words = record.caption.replace(",", "").split()
        assert [e.label for e in record.entities] == [x for x in words if x in w.CLASSES]
        for entity in record.entities:
            box = tuple(int(c) for c in entity.box)
            look = _look_of(image, _decode_png(entity.mask_png) > 0, box)
            assert look in w.training_looks(entity.label)
            assert look not in w.HELD_OUT_LOOKS[entity.label]


def _read_raw_records(files) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def test_eval_file_holds_held_out_scenes(world):
    _, files = world
    scenes = w.load_eval_scenes(files.eval_file)
    assert sorted(scenes) == [1, 2, 3]
    for count, items in scenes.items():
        assert len(items) == NUM_EVAL
        for scene in items:
            assert len(scene.subjects) == count
            assert all(s.look in w.HELD_OUT_LOOKS[s.cls] for s in scene.subjects)
            assert w.scene_from_json(w.scene_to_json(scene)) == scene
    eval_set = w.read_eval_file(files.eval_file)
    assert (eval_set.image_size, eval_set.pattern_period) == (SIZE, w.DEFAULT_PERIOD)


def test_reader_batches_carry_the_world_boxes(world):
    _, files = world
    records = [schema.decode_example_py(r) for r in _read_raw_records(files.record_files)]
    box_sets = {frozenset(tuple(e.box) for e in r.entities) for r in records}
    cfg = pipeline.default_config(SIZE)
    cfg.file_pattern = ",".join(files.record_files)
    cfg.batch_size = 4
    cfg.subject_size = 32
    cfg.shuffle_buffer = 8
    cfg.num_epochs = 1
    cfg.max_subjects = 3
    cfg.filters.min_mask_fill = 0.0
    cfg.filters.max_near_white_fraction = 1.0  # white pattern stripes are part of the world
    batches = list(pipeline.make_iterator(cfg, 0, 1))
    assert len(batches) == NUM_IMAGES // cfg.batch_size
    for batch in batches:
        for boxes, valid in zip(batch["subject_boxes"], batch["subject_valid"], strict=True):
            pixels = frozenset(tuple(float(c) for c in np.round(b * SIZE, 3)) for b in boxes[valid])
            assert pixels in box_sets


def test_cli_help():
    result = subprocess.run(
        [sys.executable, str(REPO / "data" / "toy_world.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "--workdir" in result.stdout and "--config" in result.stdout  # absl's --help exits 1
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The evaluator


@pytest.mark.parametrize("period", [w.DEFAULT_PERIOD, 8, 10])
def test_evaluator_reads_ground_truth_renders(period):
    results = []
    for scene in _scenes(seed=4, count=3 * GROUND_TRUTH_SCENES):
        image, _ = w.render_scene(scene, SIZE, period)
        result = ev.evaluate_scene(image, scene)
        results.append(result)
        for subject, found in zip(scene.subjects, result.subjects, strict=True):
            if found.all_ok:
                assert found.detected_class == subject.cls
                assert found.detected_colour == subject.look.colour
                assert found.detected_pattern == subject.look.pattern
        assert result.detected_background == scene.background or not result.scene_ok
    summary = ev.summarise(results)
    for key in ("location", "identity", "class", "scene"):
        assert summary[key] >= REQUIRED_ACCURACY, summary


def _with_pattern(scene, pattern: str):
    looks = [dataclasses.replace(s.look, pattern=pattern) for s in scene.subjects]
    subjects = tuple(
        dataclasses.replace(s, look=k) for s, k in zip(scene.subjects, looks, strict=True)
    )
    return dataclasses.replace(scene, subjects=subjects)


def test_pattern_confusion_counts_each_requested_pattern_as_read():
    scenes = _scenes(seed=6, count=30)
    solid = [_with_pattern(scene, "solid") for scene in scenes]
    # Drawn solid whatever was asked: every read is "solid" (or none found).
    drawn = [
        ev.evaluate_scene(w.render_scene(s, SIZE)[0], asked)
        for s, asked in zip(solid, scenes, strict=True)
    ]
    confusion = ev.pattern_confusion(scenes, drawn)
    asked = {}
    for scene in scenes:
        for subject in scene.subjects:
            asked[subject.look.pattern] = asked.get(subject.look.pattern, 0) + 1
    assert {p: sum(row.values()) for p, row in confusion.items()} == asked
    assert len(asked) > 1
    for row in confusion.values():
        assert row.get("solid", 0) >= 0.9 * sum(row.values()), confusion


def test_stripes_line_share_is_high_for_stripes_and_low_for_a_checker_drawn_instead():
    scenes = [_with_pattern(s, "stripes") for s in _scenes(seed=7, count=20)]
    subjects = sum(len(s.subjects) for s in scenes)
    true = [ev.evaluate_scene(w.render_scene(s, SIZE)[0], s) for s in scenes]
    shares = ev.stripes_line_shares(scenes, true)
    assert len(shares) >= 0.9 * subjects
    assert np.mean(np.array(shares) >= ev.STRIPES_MIN_ETA) >= 0.95, shares
    checker = [_with_pattern(s, "checker") for s in scenes]
    wrong = [
        ev.evaluate_scene(w.render_scene(c, SIZE)[0], s)
        for c, s in zip(checker, scenes, strict=True)
    ]
    wrong_shares = ev.stripes_line_shares(scenes, wrong)
    assert len(wrong_shares) >= 0.9 * subjects
    assert np.median(wrong_shares) < 0.3 < np.median(shares), (wrong_shares, shares)
    # Only striped requests count.
    assert ev.stripes_line_shares(checker, wrong) == []


def _blurred(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A render as a generator might draw it: soft, slightly off in colour, a little noisy."""
    pixels = ndimage.gaussian_filter(image.astype(np.float64), (0.7, 0.7, 0))
    pixels += rng.uniform(-8, 8, 3) + rng.normal(0, 3, pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def test_evaluator_tolerates_blur_and_colour_shifts():
    rng = np.random.default_rng(5)
    results = []
    for scene in _scenes(seed=5, count=150):
        image, _ = w.render_scene(scene, SIZE)
        results.append(ev.evaluate_scene(_blurred(image, rng), scene))
    summary = ev.summarise(results)
    for key in ("location", "identity", "class", "scene"):
        assert summary[key] >= 0.95, summary


def test_evaluator_tells_looks_drawn_in_each_others_boxes():
    scenes = [
        s
        for s in _scenes(seed=7, count=60)
        if len(s.subjects) == 2 and s.subjects[0].look.colour != s.subjects[1].look.colour
    ]
    assert len(scenes) >= 10
    true, exchanged = [], []
    for scene in scenes:
        a, b = scene.subjects
        drawn = dataclasses.replace(
            scene,
            subjects=(dataclasses.replace(a, look=b.look), dataclasses.replace(b, look=a.look)),
        )
        true.append(ev.evaluate_scene(w.render_scene(scene, SIZE)[0], scene))
        exchanged.append(ev.evaluate_scene(w.render_scene(drawn, SIZE)[0], scene))
    assert ev.summarise(true)["other_colour"] == 0.0
    summary = ev.summarise(exchanged)
    assert summary["other_colour"] >= REQUIRED_ACCURACY and summary["colour"] == 0.0, summary


def _other(rng: np.random.Generator, options, current):
    choices = [o for o in options if o != current]
    return choices[int(rng.integers(len(choices)))]


def _moved_box(rng: np.random.Generator, box) -> tuple | None:
    """The same box somewhere it does not overlap itself (None when the image has no room)."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    free = [
        (x, y, x + width, y + height)
        for x in range(SIZE - width + 1)
        for y in range(SIZE - height + 1)
        if x + width <= x0 or x >= x1 or y + height <= y0 or y >= y1
    ]
    return free[int(rng.integers(len(free)))] if free else None


def _with_subject(scene: w.Scene, index: int, **changes) -> w.Scene:
    subjects = list(scene.subjects)
    subjects[index] = dataclasses.replace(subjects[index], **changes)
    return dataclasses.replace(scene, subjects=tuple(subjects))


def _mistake(kind: str, scene: w.Scene, index: int, rng: np.random.Generator) -> w.Scene | None:
    """The scene with one deliberate mistake of the given kind."""
    subject = scene.subjects[index]
    look = subject.look
    if kind == "colour":
        return _with_subject(
            scene, index, look=w.Look(_other(rng, w.COLOURS, look.colour), look.pattern)
        )
    if kind == "pattern":
        return _with_subject(
            scene, index, look=w.Look(look.colour, _other(rng, w.PATTERNS, look.pattern))
        )
    if kind == "shape":
        return _with_subject(scene, index, cls=_other(rng, w.CLASSES, subject.cls))
    if kind == "moved":
        box = _moved_box(rng, subject.box)
        return None if box is None else _with_subject(scene, index, box=box)
    return dataclasses.replace(scene, background=_other(rng, w.BACKGROUNDS, scene.background))


CAUGHT = {
    "colour": lambda result, i: not result.subjects[i].colour_ok,
    "pattern": lambda result, i: not result.subjects[i].pattern_ok,
    "shape": lambda result, i: not result.subjects[i].cls_ok,
    "moved": lambda result, i: not result.subjects[i].located,
    "background": lambda result, i: not result.scene_ok,
}


@pytest.mark.parametrize("kind", sorted(CAUGHT))
def test_evaluator_catches_wrong_renders(kind):
    rng = np.random.default_rng(6)
    caught = []
    for scene in _scenes(seed=7, count=WRONG_RENDERS):
        index = int(rng.integers(len(scene.subjects)))
        wrong = _mistake(kind, scene, index, rng)
        if wrong is None:
            continue
        image, _ = w.render_scene(wrong, SIZE)
        result = ev.evaluate_scene(image, scene)
        caught.append(CAUGHT[kind](result, index))
        if kind != "background":
            assert result.scene_ok
    assert len(caught) >= 0.8 * WRONG_RENDERS
    assert np.mean(caught) >= REQUIRED_CATCH_RATE


def test_an_empty_image_locates_nothing():
    scene = _scenes(seed=8, count=3)[2]
    image = w.render_background(scene.background, SIZE, scene.texture_seed)
    result = ev.evaluate_scene(image, scene)
    assert result.scene_ok
    assert not any(s.located or s.cls_ok or s.identity_ok for s in result.subjects)


def test_summarise_counts_subjects_and_images():
    def subject(ok: bool) -> ev.SubjectResult:
        return ev.SubjectResult(ok, 1.0, None, ok, ok, True, ok, None, None, None)

    results = [
        ev.ImageResult((subject(True), subject(False)), True, "sand"),
        ev.ImageResult((subject(True),), False, "grass"),
    ]
    summary = ev.summarise(results)
    assert summary["location"] == pytest.approx(2 / 3)
    assert summary["pattern"] == 1.0 and summary["identity"] == pytest.approx(2 / 3)
    assert summary["scene"] == 0.5 and summary["subject"] == pytest.approx(2 / 3)


def test_ceiling_scores_the_true_scenes_through_the_reconstruction():
    scenes = _scenes(seed=6, count=30)
    exact = benchmark.reconstructed_scenes(lambda images: images, scenes, SIZE, w.DEFAULT_PERIOD)
    for image, scene in zip(exact.images, scenes, strict=True):
        np.testing.assert_array_equal(image, w.render_scene(scene, SIZE)[0])
    assert exact.summary()["identity"] >= REQUIRED_ACCURACY, exact.summary()

    def grey(images: np.ndarray) -> np.ndarray:
        return np.repeat(images.mean(-1, keepdims=True), 3, -1).round().astype(np.uint8)

    greyed = benchmark.reconstructed_scenes(grey, scenes, SIZE, w.DEFAULT_PERIOD).summary()
    assert greyed["colour"] == 0.0, greyed
