"""Entities annotated with a box only: built from COCO and JSONL files, read back by the reader
with `data.boxes_without_masks` = "box" (the filled box is the mask) or "skip"."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from fixtures_data import (
    image_bytes,
    png_bytes,
    read_records,
    rect_mask,
    write_coco,
    write_manifest,
)

from data import build
from data.coco import CocoSource
from data.manifest import ManifestSource
from sdjax.input_pipeline import pipeline, schema

SIZE = 64  # a square image read at its own size: the crop is the whole image
BOX = (16, 8, 48, 40)  # pixels x0, y0, x1, y1
LATENT = SIZE // 8
CAPTION = "a dog on the grass"


def _box_cells(size: int) -> np.ndarray:
    """(size, size) bool: the cells of a size x size grid over the image whose centre is in BOX."""
    centres = (np.arange(size) + 0.5) * SIZE / size
    x0, y0, x1, y1 = BOX
    in_x = (x0 <= centres) & (centres <= x1)
    in_y = (y0 <= centres) & (centres <= y1)
    return in_y[:, None] & in_x[None, :]


def _coco_without_segmentation(root: Path) -> list[str]:
    image = {"id": 1, "file_name": "dog.jpg", "width": SIZE, "height": SIZE}
    image["data"] = image_bytes(SIZE, SIZE, 5)
    x0, y0, x1, y1 = BOX
    annotation = {"image_id": 1, "category": "dog", "bbox": [x0, y0, x1 - x0, y1 - y0]}
    source = CocoSource(*write_coco(root, [image], [annotation], {1: [CAPTION]}))
    result = build(source, root / "out")
    assert result.report.entities == 1 and result.report.entities_without_mask == 1
    assert result.report.skipped_entities == {}
    return result.files


def _manifest(root: Path, mask: bool) -> list[str]:
    root.mkdir()
    (root / "dog.jpg").write_bytes(image_bytes(SIZE, SIZE, 5))
    entity = {"label": "dog", "box": list(BOX)}
    if mask:
        (root / "dog.png").write_bytes(png_bytes(rect_mask(SIZE, SIZE, BOX) * 255))
        entity["mask"] = "dog.png"
    line = {"image": "dog.jpg", "caption": CAPTION, "entities": [entity]}
    result = build(ManifestSource((write_manifest(root / "set.jsonl", [line]),)), root / "out")
    assert result.report.entities_without_mask == (0 if mask else 1)
    return result.files


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("boxes")
    return {
        "coco": _coco_without_segmentation(root / "coco"),
        "jsonl": _manifest(root / "jsonl", mask=False),
        "jsonl_masked": _manifest(root / "jsonl_masked", mask=True),
    }


def _read(files: list[str], **changes) -> tuple[list[dict], dict[str, int]]:
    cfg = pipeline.default_config(SIZE)
    cfg.update(
        file_pattern=",".join(files),
        subject_size=32,
        batch_size=1,
        num_epochs=1,
        shuffle_buffer=1,
        shuffle_files=False,
        **changes,
    )
    iterator = pipeline.make_iterator(cfg, 0, 1)
    return list(iterator), iterator.stats


@pytest.mark.parametrize("source", ["coco", "jsonl"])
def test_record_marks_the_entity_as_box_only(shards, source):
    (record,) = read_records(shards[source])
    assert list(record["entities/mask"]) == [schema.NO_MASK]
    np.testing.assert_array_equal(record["entities/box"], BOX)
    (data,) = tf.data.TFRecordDataset(shards[source]).as_numpy_iterator()
    (entity,) = schema.decode_example_py(data).entities
    assert entity.mask_png is None
    assert schema.encode_example(schema.decode_example_py(data)) == data


@pytest.mark.parametrize("source", ["coco", "jsonl"])
@pytest.mark.parametrize("location", ["box", "segmentation"])
def test_box_stands_in_for_the_missing_mask(shards, source, location):
    (batch,), stats = _read(shards[source], location_mask=location)
    assert stats == {}
    assert batch["subject_valid"].tolist() == [[True, False]]
    np.testing.assert_array_equal(batch["location_mask"][0, ..., 0], ~_box_cells(LATENT))
    # The filled box gives what a mask of exactly that rectangle gives: the same attention-loss
    # targets and the same subject cut-out (the same seed draws the same augmentation).
    (masked,), _ = _read(shards["jsonl_masked"], location_mask=location)
    for key in batch:
        np.testing.assert_array_equal(batch[key], masked[key], err_msg=key)
    target = batch["subject_masks_4"][0, 0]  # 16 px cells: the box covers rows 0-2, columns 1-2
    assert target[1, 1:3].min() > 0.5 and target[3].max() == 0.0 and target[:, 0].max() < 0.2


@pytest.mark.parametrize("source", ["coco", "jsonl"])
def test_skip_drops_box_only_entities_under_their_own_reason(shards, source):
    # The masked record, read last (files are read in name order), delivers the counts.
    files = shards[source] + shards["jsonl_masked"]
    assert sorted(files) == files
    batches, stats = _read(files, boxes_without_masks="skip")
    assert len(batches) == 1 and stats == {"box_only": 1}


def test_unknown_setting_is_named(shards):
    with pytest.raises(ValueError, match=r"boxes_without_masks='outline'.*\['box', 'skip'\]"):
        _read(shards["coco"], boxes_without_masks="outline")
