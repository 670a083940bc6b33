"""The tf.data reader end to end on small real TFRecords: contract, filters, bad input, resumption."""

import dataclasses
import io
import logging
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from sdjax import tokenizer as tok
from sdjax import trainer
from sdjax.images import EXIF_ORIENTATION
from sdjax.input_pipeline import augment, backgrounds, exif, filters, pipeline, schema, tokens
from sdjax.input_pipeline.iterator import PipelineIterator
from sdjax.input_pipeline.iterator_state import IteratorRestore, IteratorSave
from sdjax.input_pipeline.reasons import DataError, Reason
from sdjax.input_pipeline.skip_warnings import SkipWarnings
from sdjax.training.checkpoint import Checkpointer

CLIP = tok.load_tokenizer()
HEIGHT, WIDTH = 72, 96
# Two subjects that a 72 px square crop can hold together (x from 14 to 80).
BOXES = ((14.0, 10.0, 40.0, 50.0), (44.0, 20.0, 80.0, 60.0))
LABEL_PAIRS = (("dog", "cat"), ("car", "tree"), ("cup", "book"), ("horse",), ("bird",))
RESOLUTION, SUBJECT_SIZE = 64, 32
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _ellipse(box, height=HEIGHT, width=WIDTH) -> np.ndarray:
    """Boolean mask of the ellipse inscribed in `box` (covers ~78% of it)."""
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    return ((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + (
        (yy - (y0 + y1) / 2) / ((y1 - y0) / 2)
    ) ** 2 <= 1


def _record(
    key: str,
    labels=("dog", "cat"),
    caption: str | None = None,
    pixels: np.ndarray | None = None,
    encoded: bytes | None = None,
    **entity_changes,
) -> schema.ImageExample:
    """A record of `labels` in BOXES; `entity_changes` (box, mask_png) replace the first entity's."""
    if pixels is None:
        rng = np.random.default_rng(sum(key.encode()))
        pixels = rng.integers(0, 200, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    caption = caption or "a " + " and a ".join(labels) + " on the grass"
    entities = []
    for i, label in enumerate(labels):
        fields = dict(box=BOXES[i], mask_png=schema.encode_mask_png(_ellipse(BOXES[i])))
        if i == 0:
            fields.update(entity_changes)
        entities.append(
            schema.Entity(
                label=label,
                clause_ids=tuple(tok.clause_ids(CLIP, label)),
                score=0.9 - 0.1 * i,
                **fields,
            )
        )
    return schema.ImageExample(
        key=key,
        image_encoded=_png(pixels) if encoded is None else encoded,
        image_format="png",
        height=HEIGHT,
        width=WIDTH,
        caption=caption,
        caption_ids=tuple(tok.caption_ids(CLIP, caption)),
        entities=tuple(entities),
    )


def _write(path, records) -> str:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record if isinstance(record, bytes) else schema.encode_example(record))
    return str(path)


def _config(pattern: str, **changes) -> ml_collections.ConfigDict:
    cfg = pipeline.default_config(RESOLUTION)
    cfg.file_pattern = pattern
    cfg.subject_size = SUBJECT_SIZE
    cfg.batch_size = 4
    cfg.shuffle_buffer = 8
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    records = [_record(f"img-{i}", LABEL_PAIRS[i % len(LABEL_PAIRS)]) for i in range(12)]
    _write(folder / "train-0.tfrecord", records[:6])
    _write(folder / "train-1.tfrecord", records[6:])
    return str(folder / "train-*.tfrecord"), records


@pytest.fixture(scope="module")
def one_epoch(good_files):
    pattern, _ = good_files
    return list(pipeline.make_iterator(_config(pattern, num_epochs=1), 0, 1))


def test_default_config_holds_the_reference_numbers():
    cfg = pipeline.default_config()
    f = cfg.filters
    assert (f.min_area_ratio, f.max_area_ratio, f.min_aspect, f.max_aspect) == (0.08, 0.7, 0.3, 3.0)
    assert (f.min_score, f.min_mask_fill, f.max_overlap, f.min_box_area_px) == (0.3, 0.6, 0.8, 200)
    assert (f.near_white_threshold, f.max_near_white_fraction) == (0.9, 0.1)
    assert (tuple(cfg.augment.clip_mean), tuple(cfg.augment.clip_std)) == (CLIP_MEAN, CLIP_STD)
    assert (cfg.resolution, cfg.max_subjects, cfg.subject_size) == (512, 2, 224)
    assert tuple(cfg.attention_map_sizes) == (32, 16, 8)
    assert (cfg.pad_id, cfg.location_mask) == (49407, "box")
    assert (cfg.dropout.text, cfg.dropout.text_and_mask, cfg.dropout.mask) == (0.05, 0.05, 0.05)
    assert cfg.dropout.subjects == 0.05
    tiny = pipeline.default_config(64)
    assert tuple(tiny.attention_map_sizes) == (4, 2, 1)
    assert tiny.filters.min_box_area_px == pytest.approx(200 / 64)


def test_batches_follow_the_data_contract(one_epoch):
    assert len(one_epoch) == 3  # 12 records, batches of 4
    signature = pipeline.output_signature(_config(""))
    for batch in one_epoch:
        assert set(batch) == set(signature)
        for key, spec in signature.items():
            assert batch[key].shape == (4, *spec.shape), key
            assert batch[key].dtype == spec.dtype.as_numpy_dtype, key
        assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
        assert batch["image"].std() > 0.1
        mean, std = np.array(CLIP_MEAN), np.array(CLIP_STD)
        pixels = batch["subject_pixels"]
        assert np.all(pixels >= -mean / std - 1e-5) and np.all(pixels <= (1 - mean) / std + 1e-5)
        assert np.all(pixels[~batch["subject_valid"]] == 0)
        assert np.all(np.isin(batch["location_mask"], [0.0, 1.0]))
        for size in (4, 2, 1):
            masks = batch[f"subject_masks_{size}"]
            assert masks.min() >= 0 and masks.max() <= 1
            assert np.all(masks[~batch["subject_valid"]] == 0)
            assert np.all(masks[batch["subject_valid"]].sum(axis=(1, 2)) > 0)


def test_every_kept_box_lies_whole_inside_the_crop(one_epoch):
    """Boxes come back unclipped: their size in the 72 px crop is their size in the image."""
    sizes = {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in BOXES}
    for batch in one_epoch:
        boxes = batch["subject_boxes"][batch["subject_valid"]]
        assert np.all((boxes >= 0) & (boxes <= 1))
        for x0, y0, x1, y1 in boxes * HEIGHT:
            assert any(np.allclose((x1 - x0, y1 - y0), s, atol=1e-3) for s in sizes)
        assert np.all(batch["subject_boxes"][~batch["subject_valid"]] == 0)


def test_location_mask_is_zero_exactly_inside_the_boxes(one_epoch):
    latent = RESOLUTION // 8
    centres = (np.arange(latent) + 0.5) / latent
    for batch in one_epoch:
        for mask, boxes, valid in zip(
            batch["location_mask"], batch["subject_boxes"], batch["subject_valid"], strict=True
        ):
            inside = np.zeros((latent, latent), bool)
            for x0, y0, x1, y1 in boxes[valid]:
                in_x = (centres >= x0) & (centres <= x1)
                in_y = (centres >= y0) & (centres <= y1)
                inside |= np.outer(in_y, in_x)
            np.testing.assert_array_equal(mask[..., 0], np.where(inside, 0.0, 1.0))


def test_prompt_ids_and_positions(good_files, one_epoch):
    _, records = good_files
    expected = {
        tuple(
            tok.assemble_template(r.caption_ids, [e.clause_ids for e in r.entities], tok.EOS_ID).ids
        ): r
        for r in records
    }
    for batch in one_epoch:
        for i, ids in enumerate(batch["input_ids"]):
            record = expected[tuple(ids)]
            valid = batch["subject_valid"][i]
            assert valid.sum() == len(record.entities)
            placeholders = batch["placeholder_positions"][i][valid]
            entities = batch["entity_positions"][i][valid]
            assert np.all(ids[placeholders] == tok.PLACEHOLDER_ID)
            last_tokens = [e.clause_ids[-1 - tok.CLAUSE_SUFFIX_LENGTH] for e in record.entities]
            assert ids[entities].tolist() == last_tokens
            assert np.all(batch["placeholder_positions"][i][~valid] == 0)


@pytest.mark.parametrize("entity_token", tok.ENTITY_TOKENS)
def test_template_ids_match_the_tokenizer_assembly(entity_token):
    captions = ["a dog and a cat", "a very " + "long " * 70 + "caption with a dog and a cat"]
    clauses = [tok.clause_ids(CLIP, label) for label in ("dog", "cat", "teddybear")]
    flat = tf.constant([i for c in clauses for i in c], tf.int64)
    lengths = tf.constant([len(c) for c in clauses], tf.int64)
    for caption in captions:
        ids = tok.caption_ids(CLIP, caption)
        for selected in ([2, 0], [1], []):
            want = tok.assemble_template(
                ids, [clauses[j] for j in selected], pad_id=0, entity_token=entity_token
            )
            got = tokens.template_ids(
                tf.constant(ids, tf.int64),
                flat,
                lengths,
                tf.constant(selected, tf.int64),
                0,
                entity_token=entity_token,
            )
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.placeholder_positions, want.placeholder_positions)
            np.testing.assert_array_equal(got.entity_positions, want.entity_positions)
            np.testing.assert_array_equal(got.fits, want.placeholder_positions > 0)


def test_supervised_entity_token_is_the_labels_last_subtoken_by_default():
    """The reference code supervises `sks` index - 2: the last sub-token of a split label."""
    caption = tok.caption_ids(CLIP, "a teddybear on a bed")
    clause = tok.clause_ids(CLIP, "teddybear")
    label = CLIP.convert_ids_to_tokens(clause[tok.CLAUSE_PREFIX_LENGTH : -tok.CLAUSE_SUFFIX_LENGTH])
    assert label == ["teddy", "bear</w>"]  # the hand-made case: a label of two sub-tokens
    flat, lengths = tf.constant(clause, tf.int64), tf.constant([len(clause)], tf.int64)
    ids = tf.constant(caption, tf.int64)
    for which, word in (("last", "bear</w>"), ("first", "teddy")):
        got = tokens.template_ids(
            ids, flat, lengths, tf.constant([0], tf.int64), 0, entity_token=which
        )
        position = int(got.entity_positions[0])
        assert CLIP.convert_ids_to_tokens([int(got.ids[position])]) == [word], which
        if which == "last":
            assert position == int(got.placeholder_positions[0]) - 2
    assert pipeline.default_config().entity_token == "last"


def test_dropout_flags_follow_the_thresholds():
    cfg = pipeline.default_config()
    cases = {
        0.01: (True, False),  # text only
        0.07: (True, True),  # text and mask
        0.12: (False, True),  # mask only
        0.2: (False, False),
    }
    for r, (text, mask) in cases.items():
        flags = pipeline._dropout_flags(tf.constant([r, 0.5]), cfg)
        assert (bool(flags["drop_text"]), bool(flags["drop_mask"])) == (text, mask), r
        assert not bool(flags["drop_subjects"])
    assert bool(pipeline._dropout_flags(tf.constant([0.5, 0.01]), cfg)["drop_subjects"])


def test_entity_filters_each_rule():
    f = pipeline.default_config().filters
    boxes = tf.constant(
        [
            [0.0, 0.0, 50.0, 50.0],  # 25% of 100x100: passes
            [0.0, 0.0, 20.0, 20.0],  # 4%: too small
            [0.0, 0.0, 90.0, 90.0],  # 81%: too large
            [0.0, 0.0, 95.0, 20.0],  # aspect 4.75: too wide
            [10.0, 10.0, 60.0, 60.0],  # low score
            [10.0, 10.0, 60.0, 60.0],  # label of two words
            [10.0, 10.0, 60.0, 60.0],  # label not in the caption
            [10.0, 10.0, 60.0, 60.0],  # label with regex characters, present
        ]
    )
    scores = tf.constant([0.9, 0.9, 0.9, 0.9, 0.2, 0.9, 0.9, 0.9])
    labels = tf.constant(["dog", "dog", "dog", "dog", "dog", "teddy bear", "cat", "c++"])
    caption = tf.constant("a dog, a teddy bear and c++ code")
    got = filters.entity_candidates(boxes, scores, labels, caption, 100 * 100, f)
    assert got.numpy().tolist() == [True, False, False, False, False, False, False, True]
    mask = np.zeros((2, 20, 20), bool)
    mask[0, 0:10, 0:6] = True  # 60% of its 10x10 box
    mask[1, 0:10, 0:5] = True  # 50%
    fills = filters.mask_fills_box(
        tf.constant(mask), tf.constant([[0.0, 0.0, 10.0, 10.0]] * 2), f.min_mask_fill
    )
    assert fills.numpy().tolist() == [True, False]
    ranked = tf.constant(
        [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 9.0, 9.0],  # inside box 0
            [20.0, 0.0, 30.0, 10.0],
            [40.0, 0.0, 50.0, 10.0],
        ]
    )
    chosen = filters.rank_and_select(
        ranked, tf.constant([0.5, 0.9, 0.7, 0.6]), tf.constant([True] * 4), f.max_overlap, 2
    )
    assert chosen.numpy().tolist() == [1, 2]  # box 0 overlaps the better box 1; top 2 kept
    white = np.full((10, 10, 3), 240, np.uint8)
    white[:, :9] = 100
    assert float(filters.near_white_fraction(tf.constant(white), 0.9)) == pytest.approx(0.1)
    crop = filters.crop_box_ok(
        tf.constant([[0.0, 0.0, 10.0, 21.0], [0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 80.0, 4.0]]), f
    )
    assert crop.numpy().tolist() == [True, False, False]  # 210 px²; 200 px²; aspect 20


def _batch_of_subjects(background: str, box=(4, 4, 12, 12), background_dir: str = ""):
    """Two black 16 px targets, each with a red subject filling `box` (x0, y0, x1, y1), and the
    CLIP-normalised subject images with augmentation off."""
    cfg = pipeline.default_config(16)
    cfg.subject_size, cfg.background = 16, background
    cfg.background_dir = background_dir
    cfg.augment.flip_probability = cfg.augment.perspective_probability = 0.0
    cfg.augment.max_rotation_degrees = 0.0
    x0, y0, x1, y1 = box
    images = np.full((2, 16, 16, 3), -1.0, np.float32)
    images[:, y0:y1, x0:x1] = [1.0, -1.0, -1.0]
    images[1, :4] = 0.0  # the second target has a grey band on top
    masks = np.zeros((2, 2, 16, 16), bool)
    masks[:, 0, y0:y1, x0:x1] = True
    boxes = np.zeros((2, 2, 4), np.float32)
    boxes[:, 0] = np.array(box) / 16
    valid = np.array([[True, False], [True, False]])
    draws = np.full((2, 2, augment.SUBJECT_DRAWS), 0.5, np.float32)
    pixels = augment.subject_images(
        tf.constant(images),
        tf.constant(masks),
        tf.constant(boxes),
        tf.constant(valid),
        tf.constant(draws),
        tf.constant([0, 0], tf.int64),
        cfg,
    )
    return pixels.numpy(), np.array(CLIP_MEAN), np.array(CLIP_STD)


def test_label_map_box_check_of_the_reference_code():
    """Hand-made label maps: background 0, entity m is m + 1 (later masks paint over)."""
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 2:12, 2:12] = True
    masks[0, 4:10, 4:10] = False  # a ring: 64 of its 100-pixel box, background the rest
    masks[1, 0:20, 14:20] = True  # a solid bar: its box holds one label only
    masks[2, 5:7, 5:7] = True  # a dot inside the ring's hole, painted last
    boxes = tf.constant([[2.0, 2.0, 12.0, 12.0], [14.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 20.0]])
    np.testing.assert_array_equal(filters.label_map(tf.constant(masks))[5:7, 5:7], 3)
    got = filters.label_map_fills_box(tf.constant(masks), boxes, 0.6, (2, 5)).numpy().tolist()
    # ring: 3 labels, largest (ring, 64) fills 0.64 >= 0.6, the ring's 64 pixels <= 100: kept.
    # bar: one label in its box: dropped. Whole image: largest (background) fills 0.57: dropped.
    assert got == [True, False, False]
    assert filters.mask_fills_box(tf.constant(masks[:2]), boxes[:2], 0.6).numpy().tolist() == [
        True,
        True,
    ]
    thin = masks.copy()
    thin[0, 3:11, 3:11] = False  # a 1-pixel ring: 36% of its box, the background fills 64%
    assert filters.label_map_fills_box(tf.constant(thin), boxes[:1], 0.6, (2, 5)).numpy()[0]
    assert not filters.mask_fills_box(tf.constant(thin[:1]), boxes[:1], 0.6).numpy()[0]
    big = masks.copy()
    big[0, 12:20, 0:12] = True  # the ring's label now spills far outside its box
    assert not filters.label_map_fills_box(tf.constant(big), boxes[:1], 0.6, (2, 5)).numpy()[0]


@pytest.mark.parametrize("box_fill,kept", [("own_mask", [1]), ("label_map", [0])])
def test_reader_selects_by_the_configured_box_fill(box_fill, kept):
    """A thin ring (kept by the reference's check) and a box its mask fills alone (dropped)."""
    ring = np.zeros((HEIGHT, WIDTH), bool)
    ring[10:50, 14:40] = True
    ring[12:48, 16:38] = False
    solid = np.zeros((HEIGHT, WIDTH), bool)
    solid[20:60, 44:80] = True
    record = _record("ring", mask_png=schema.encode_mask_png(ring))
    second = dataclasses.replace(record.entities[1], mask_png=schema.encode_mask_png(solid))
    record = dataclasses.replace(record, entities=(record.entities[0], second))
    cfg = _config("", max_subjects=2)
    cfg.filters.box_fill = box_fill
    element = {
        "record": tf.constant(schema.encode_example(record)),
        "file_reason": tf.constant(int(Reason.OK)),
    }
    reason, selection = pipeline._select(element, cfg)
    assert int(reason) == int(Reason.OK)
    assert selection["entities"].numpy().tolist() == kept


@pytest.mark.parametrize("contain,offset", [("all", 12), ("selected", 1)])
def test_square_crop_holds_every_box_of_the_image_or_the_selected(contain, offset):
    """A tree not in the caption (never selected) at the far right: no 72 px square holds it and
    the dog, so the reference code's rule falls back to the centre square (x = 12)."""
    record = _record("crop", ("dog", "tree"), caption="a dog on the grass")
    far = dataclasses.replace(
        record.entities[1],
        box=(70.0, 10.0, 94.0, 50.0),
        mask_png=schema.encode_mask_png(_ellipse((70.0, 10.0, 94.0, 50.0))),
    )
    dog = dataclasses.replace(
        record.entities[0],
        box=(2.0, 10.0, 30.0, 50.0),
        mask_png=schema.encode_mask_png(_ellipse((2.0, 10.0, 30.0, 50.0))),
    )
    record = dataclasses.replace(record, entities=(dog, far))
    cfg = _config("", crop_contains=contain)
    element = {
        "record": tf.constant(schema.encode_example(record)),
        "file_reason": tf.constant(int(Reason.OK)),
    }
    reason, selection = pipeline._select(element, cfg)
    assert int(reason) == int(Reason.OK) and selection["entities"].numpy().tolist() == [0]
    _, example = pipeline._transform(selection, tf.constant([0.5, 0.5]), cfg)
    right_edge = float(example["subject_boxes"][0, 2]) * HEIGHT  # the square's side is 72 px
    assert 30.0 - right_edge == pytest.approx(offset, abs=1e-4)


def test_subject_on_white_is_padded_square_and_empty_slots_are_zero():
    # An 8x4 box padded to an 8x8 square and scaled by 2: canvas rows 4-11 hold the subject.
    pixels, mean, std = _batch_of_subjects("white", box=(4, 6, 12, 10))
    red, white = (np.eye(3)[0] - mean) / std, (1.0 - mean) / std
    inner = pixels[:, 0, 5:11, 1:-1]  # the outer ring of the subject blends with its surroundings
    np.testing.assert_allclose(inner, np.broadcast_to(red, inner.shape), atol=1e-5)
    for band in (pixels[:, 0, :3], pixels[:, 0, 13:]):  # beyond the 1 px bilinear seam
        np.testing.assert_allclose(band, np.broadcast_to(white, band.shape), atol=1e-5)
    assert np.all(pixels[:, 1] == 0)


def test_subject_on_random_background_uses_the_next_image():
    pixels, mean, std = _batch_of_subjects("random")
    red = (np.eye(3)[0] - mean) / std
    # Half the canvas area: an 11x11 px subject at offset floor(0.5 * (16 - 11 + 1)) = 3.
    np.testing.assert_allclose(
        pixels[:, 0, 5:12, 5:12], np.broadcast_to(red, (2, 7, 7, 3)), atol=1e-5
    )
    grey = (0.5 - mean) / std
    np.testing.assert_allclose(pixels[0, 0, 1, 1], grey, atol=1e-5)  # next image's grey band
    np.testing.assert_allclose(pixels[1, 0, 1, 1], -mean / std, atol=1e-5)  # first's black


def test_subject_backgrounds_come_from_the_folder_and_never_from_another_image(tmp_path):
    """The reference code's BG-20k backgrounds: here a folder of two flat-colour images."""
    colours = {"blue.png": (0, 0, 255), "green.jpg": (0, 255, 0)}
    for name, colour in colours.items():
        Image.new("RGB", (40, 24), colour).save(tmp_path / name, quality=100)
    (tmp_path / "notes.txt").write_text("not an image")
    pixels, mean, std = _batch_of_subjects("folder", background_dir=str(tmp_path))
    seen = pixels * std + mean  # back to [0, 1]
    behind = seen[:, 0, 1, 1]  # outside the 11 px subject at offset 3: background only
    flat = [np.array(c) / 255.0 for c in colours.values()]
    for pixel in behind:
        assert min(np.abs(pixel - c).max() for c in flat) < 0.02, pixel  # no grey band, no black
    np.testing.assert_allclose(
        seen[:, 0, 5:12, 5:12], np.broadcast_to([1, 0, 0], (2, 7, 7, 3)), atol=1e-5
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        backgrounds.background_files(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not a folder"):
        _batch_of_subjects("folder", background_dir=str(tmp_path / "missing"))


@pytest.mark.parametrize("kind", ["procedural", "noise"])
def test_drawn_subject_backgrounds_vary_per_subject(kind):
    pixels, mean, std = _batch_of_subjects(kind)
    seen = pixels * std + mean
    assert seen.min() >= -1e-5 and seen.max() <= 1 + 1e-5
    assert np.abs(seen[0, 0, :3] - seen[1, 0, :3]).max() > 0.05  # each subject its own backdrop
    drawn = backgrounds.procedural(tf.random.uniform([64, backgrounds.PROCEDURAL_DRAWS]), 16)
    assert float(tf.math.reduce_std(drawn)) > 0.1  # not one flat colour


def test_location_mask_modes():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 8:16, 8:16] = True
    boxes = tf.constant([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    valid = tf.constant([True, False])
    masked = tf.constant([False, False])
    seg = augment.location_mask(boxes, tf.constant(masks), valid, masked, "segmentation", 8)
    expected = np.ones((8, 8))
    expected[1:3, 1:4] = 0.0  # nearest sampling at cell centres (2i + 1, 2j + 1)
    np.testing.assert_array_equal(seg[..., 0], expected)
    box = augment.location_mask(boxes, tf.constant(masks), valid, masked, "box", 8)
    assert float(tf.reduce_sum(1 - box)) == 16
    # A subject without a mask of its own is its box in segmentation mode too.
    box_only = tf.constant([True, False])
    seg = augment.location_mask(boxes, tf.constant(masks), valid, box_only, "segmentation", 8)
    np.testing.assert_array_equal(seg, box)
    with pytest.raises(ValueError, match="'ellipse'"):
        augment.location_mask(boxes, tf.constant(masks), valid, masked, "ellipse", 8)


def _jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    tags = Image.Exif()
    tags[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=tags, quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_read_and_applied_as_viewers_do(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), np.uint8)
    data = _jpeg_with_orientation(pixels, orientation)
    assert int(exif.jpeg_orientation(tf.constant(data))) == orientation
    with Image.open(io.BytesIO(data)) as photo:
        stored = np.asarray(photo.convert("RGB"))
        shown = np.asarray(ImageOps.exif_transpose(photo).convert("RGB"))
    turned = exif.apply_orientation(tf.constant(stored), tf.constant(orientation))
    np.testing.assert_array_equal(turned, shown)
    assert int(exif.jpeg_orientation(tf.constant(_png(pixels)))) == 1


def test_reader_shows_a_tagged_jpeg_upright(tmp_path):
    # Stored 64 wide, 48 tall, dark on the left; tag 6 shows it 48 wide, 64 tall, dark on top.
    stored = np.full((48, 64, 3), 128, np.uint8)
    stored[:, :32] = 0
    box = (8.0, 20.0, 40.0, 44.0)  # drawn on the photo as displayed
    label = "dog"
    example = schema.ImageExample(
        key="phone-photo",
        image_encoded=_jpeg_with_orientation(stored, 6),
        image_format="jpeg",
        height=64,
        width=48,
        caption="a dog",
        caption_ids=tuple(tok.caption_ids(CLIP, "a dog")),
        entities=(
            schema.Entity(
                label=label,
                box=box,
                mask_png=schema.encode_mask_png(_ellipse(box, 64, 48)),
                clause_ids=tuple(tok.clause_ids(CLIP, label)),
            ),
        ),
    )
    pattern = _write(tmp_path / "photo.tfrecord", [example])
    cfg = _config(pattern, batch_size=1, num_epochs=1, crop="centred", attention_map_sizes=(3,))
    cfg.resolution = 48
    iterator = pipeline.make_iterator(cfg, 0, 1)
    (batch,) = list(iterator)
    assert iterator.stats == {}
    # The centred square keeping the box is displayed rows 8 to 55: 24 dark rows, then grey.
    image = batch["image"][0]
    assert image[:22].mean() < -0.95 and abs(image[26:].mean()) < 0.05
    np.testing.assert_allclose(batch["subject_boxes"][0, 0], [8 / 48, 12 / 48, 40 / 48, 36 / 48])


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_one_seed_gives_one_stream_and_a_restored_iterator_continues_exactly(good_files, tmp_path):
    pattern, _ = good_files
    cfg = _config(pattern, batch_size=2)
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    reference = pipeline.make_iterator(cfg, 0, 1)
    head = _take(reference, 2)
    state = {"step": np.array(2)}
    manager.save(
        2,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=IteratorSave(reference)),
    )
    manager.wait_until_finished()
    tail = _take(reference, 7)  # past the end of the first epoch (6 batches)

    # The same stream with every stage on one thread: parallelism does not change it.
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    serial = pipeline.build_dataset(cfg, 0, 1).with_options(options)
    _assert_same_batches(_take(PipelineIterator(serial, strict=False), 9), head + tail)

    resumed = pipeline.make_iterator(cfg, 0, 1)
    restored = manager.restore(
        2,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state), data=IteratorRestore(resumed)
        ),
    )
    assert restored.data is resumed and int(restored.state["step"]) == 2
    _assert_same_batches(_take(resumed, 7), tail)

    cfg.seed = 1
    other = next(pipeline.make_iterator(cfg, 0, 1))
    assert not np.array_equal(other["image"], head[0]["image"])


def _counting_stream(num_reasons: int) -> PipelineIterator:
    """Batches of 2 with a running skip count of `num_reasons` entries, as the reader carries."""

    def count(counts, index):
        example = {"_counts": counts, "_reason": tf.constant(0, tf.int32), "x": index}
        return counts, example

    ds = tf.data.Dataset.range(100).scan(tf.zeros([num_reasons], tf.int64), count).batch(2)
    return PipelineIterator(ds, strict=False)


def test_an_input_position_of_another_layout_restarts_the_stream_and_keeps_the_model(
    tmp_path, caplog
):
    checkpoints = Checkpointer(tmp_path / "ckpt", every=1, keep=1, use_async=False)
    saved = _counting_stream(11)
    next(saved)
    state = {"w": jnp.arange(3.0)}
    checkpoints.save(1, state, saved, force=True)
    checkpoints.wait()
    config = ml_collections.ConfigDict({"data": {}})
    zeros = {"w": jnp.zeros(3)}

    # The same layout continues where it stood.
    same, batches = trainer.restore(checkpoints, 1, zeros, _counting_stream(11), config)
    np.testing.assert_array_equal(same["w"], state["w"])
    np.testing.assert_array_equal(next(batches)["x"], [2, 3])

    # A reader whose skip count grew (a new reason) cannot read that position back.
    with caplog.at_level(logging.WARNING, logger="sdjax.trainer"):
        other, batches = trainer.restore(
            checkpoints, 1, zeros, _counting_stream(12), config, lambda _: _counting_stream(12)
        )
    np.testing.assert_array_equal(other["w"], state["w"])
    np.testing.assert_array_equal(next(batches)["x"], [0, 1])
    assert "does not fit this reader" in caplog.text and "data stream restarts" in caplog.text


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A file mixing good records with each kind of bad input, and a truncated file."""
    folder = tmp_path_factory.mktemp("bad")
    png = _png(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    records = [
        _record("good-0"),
        _record("corrupt-image", encoded=png[: len(png) // 2]),
        _record("good-1"),
        _record("bad-mask", mask_png=b"not a png"),
        _record("mask-size", mask_png=schema.encode_mask_png(np.ones((HEIGHT - 1, WIDTH), bool))),
        _record("box-outside", box=(-6.0, 10.0, 40.0, 50.0)),
        _record("zero-box", box=(14.0, 10.0, 14.0, 50.0)),
        b"not an Example",
        _record("near-white", pixels=np.full((HEIGHT, WIDTH, 3), 250, np.uint8)),
        _record("placeholder", caption="a sks dog and a cat"),
        _record("no-subject", caption="a puppy and a kitten"),
        _record("good-2"),
    ]
    mixed = _write(folder / "a-mixed.tfrecord", records)
    truncated = _write(folder / "b-truncated.tfrecord", [_record(f"t-{i}") for i in range(3)])
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) - 100)
    return str(folder / "*.tfrecord"), mixed, truncated


def _bad_config(pattern, strict):
    return _config(
        pattern, batch_size=1, num_epochs=1, shuffle_buffer=1, shuffle_files=False, strict=strict
    )


def test_bad_input_is_counted_and_skipped(bad_files):
    pattern, _, _ = bad_files
    iterator = pipeline.make_iterator(_bad_config(pattern, strict=False), 0, 1)
    batches = list(iterator)
    assert len(batches) == 5  # 3 good in the mixed file, 2 before the truncation
    assert all(b["subject_valid"][0, 0] for b in batches)
    assert iterator.stats == {
        "corrupt_file": 1,
        "bad_record": 1,
        "corrupt_image": 1,
        "bad_mask": 1,
        "mask_size": 1,
        "bad_box": 2,
        "near_white": 1,
        "placeholder_in_caption": 1,
        "no_subject": 1,
    }


def test_skipped_bad_input_is_named_once_per_file_and_reason(bad_files, caplog):
    pattern, mixed, truncated = bad_files
    cfg = _bad_config(pattern, strict=False)
    cfg.num_epochs = 2  # the second epoch's skips are not named again
    with caplog.at_level(logging.WARNING, logger="sdjax.input_pipeline"):
        list(pipeline.make_iterator(cfg, 0, 1))
    messages = [r.getMessage() for r in caplog.records if r.name == "sdjax.input_pipeline"]
    truncation = [m for m in messages if m.startswith(truncated)]
    assert truncation == [
        f"{truncated}: record 2 skipped, corrupt_file: the file is truncated or fails its "
        "checksums from this record on; further records of this file skipped for this reason "
        "are only counted"
    ]
    named = sorted(m.split(",")[1].split(":")[0].strip() for m in messages if m.startswith(mixed))
    assert named == ["bad_box", "bad_mask", "bad_record", "corrupt_image", "mask_size"]
    assert len(messages) == 6, messages  # the selections (near-white, ...) are not bad input


def test_warnings_stop_after_the_named_limit(caplog):
    warnings = SkipWarnings(max_named=2)
    with caplog.at_level(logging.WARNING, logger="sdjax.input_pipeline"):
        for file in ("a", "b", "c", "d"):
            warnings.warn(file, int(Reason.BAD_MASK), 0)
            warnings.warn(file, int(Reason.BAD_MASK), 1)
    seen = [r.getMessage() for r in caplog.records]
    assert [m.split(":")[0] for m in seen[:2]] == ["a", "b"]
    assert len(seen) == 3 and seen[2].startswith("more records skipped as bad input")


def test_strict_mode_names_the_file_and_record_of_bad_input(bad_files):
    pattern, mixed, truncated = bad_files
    iterator = pipeline.make_iterator(_bad_config(pattern, strict=True), 0, 1)
    errors, delivered = [], 0
    while True:
        try:
            next(iterator)
            delivered += 1
        except DataError as error:
            errors.append(str(error))
        except StopIteration:
            break
    assert delivered == 5
    assert sorted(errors) == sorted(
        [
            f"{mixed}: record 1: corrupt_image",
            f"{mixed}: record 3: bad_mask",
            f"{mixed}: record 4: mask_size",
            f"{mixed}: record 5: bad_box",
            f"{mixed}: record 6: bad_box",
            f"{mixed}: record 7: bad_record",
            f"{truncated}: record 2: corrupt_file",
        ]
    )


def test_files_are_split_by_process(good_files):
    files = [f"f{i}" for i in range(5)]
    assert pipeline.host_files(files, 1, 2) == ["f1", "f3"]
    with pytest.raises(ValueError, match="process 3 gets none"):
        pipeline.host_files(files[:3], 3, 4)
    pattern, _ = good_files
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        pipeline.build_dataset(_config(pattern), 0, 3)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        pipeline.list_files("/nothing-here/*.tfrecord")
