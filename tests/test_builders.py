"""The record schema and the dataset builders: every input format, bad input, Beam, determinism."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from fixtures_data import (
    by_key,
    image_bytes,
    png_bytes,
    read_records,
    rect_mask,
    rle_counts,
    rle_string,
    write_coco,
    write_manifest,
    write_tar,
)

from data import build, build_sample_records, sample_source
from data import build_tfrecords as cli
from data.coco import CocoSource, choose_caption
from data.layout import DATASET_NAME
from data.manifest import ManifestSource
from data.masks import (
    MaskError,
    decode_coco_segmentation,
    decode_rle_counts,
    decode_rle_string,
    rasterize_polygons,
)
from data.records import BuildOptions, InputError, Reason, Report, process_unit
from data.sdd_tars import SddTarSource
from sdjax import tokenizer as tok
from sdjax.captions import label_in_caption
from sdjax.input_pipeline import filters, schema

REPO = Path(__file__).resolve().parents[1]
W, H = 32, 24


@pytest.fixture(scope="module")
def clip():
    return tok.load_tokenizer()


def _example(clip, num_entities: int) -> schema.ImageExample:
    entities = tuple(
        schema.Entity(
            label=label,
            box=(2.0, 1.0, 7.0, 4.0),
            mask_png=schema.encode_mask_png(rect_mask(6, 8, (2, 1, 7, 4))),
            clause_ids=tuple(tok.clause_ids(clip, label)),
            score=0.5,
        )
        for label in ["cat", "teddybear"][:num_entities]
    )
    return schema.ImageExample(
        key="img-1",
        image_encoded=b"\x89PNG fake bytes",
        image_format="png",
        height=6,
        width=8,
        caption="a cat with a teddybear",
        caption_ids=tuple(tok.caption_ids(clip, "a cat with a teddybear")),
        entities=entities,
    )


@pytest.mark.parametrize("num_entities", [0, 2])
def test_schema_round_trip(clip, num_entities):
    example = _example(clip, num_entities)
    data = schema.encode_example(example)
    assert data == schema.encode_example(example)
    assert schema.decode_example_py(data) == example
    parsed = tf.io.parse_single_example(data, schema.FEATURE_SPEC)
    assert int(parsed["schema_version"]) == schema.SCHEMA_VERSION
    assert parsed["entities/box"].shape == (4 * num_entities,)
    assert list(parsed["entities/clause_length"].numpy()) == [
        len(e.clause_ids) for e in example.entities
    ]
    if num_entities:
        assert parsed["entities/clause_ids"].numpy()[4] == tok.PLACEHOLDER_ID
        mask = schema.decode_mask_png(parsed["entities/mask"].numpy()[1])
        assert mask.shape == (6, 8) and mask.sum() == 15


def test_schema_refuses_bad_values():
    with pytest.raises(ValueError, match="must end with 48136"):
        schema.Entity(label="cat", box=(0, 0, 1, 1), mask_png=b"", clause_ids=(267, 518))
    with pytest.raises(ValueError, match="'gif'"):
        schema.ImageExample("k", b"", "gif", 1, 1, "c", (), ())


# --- masks ------------------------------------------------------------------------------------


def test_compressed_rle_known_string():
    # Worked by hand from the format: 5, 40 (two chunks: "X1"), 3, then 38 stored as 38 - 40.
    assert decode_rle_string("5X13N") == [5, 40, 3, 38]
    assert rle_string([5, 40, 3, 38]) == "5X13N"


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 30, 2)
        mask = rng.random((h, w)) < rng.random()
        counts = rle_counts(mask)
        assert decode_rle_string(rle_string(counts)) == counts
        np.testing.assert_array_equal(decode_rle_counts(counts, h, w), mask)
        segmentation = {"size": [int(h), int(w)], "counts": rle_string(counts)}
        np.testing.assert_array_equal(decode_coco_segmentation(segmentation, 1, 1), mask)


def test_rle_is_column_major():
    # 2x3 mask, column-major runs: 1 zero, then 2 ones (rest of column 0 and top of column 1).
    mask = decode_rle_counts([1, 2, 3], 2, 3)
    np.testing.assert_array_equal(mask, [[False, True, False], [True, False, False]])


def test_polygon_rasterisation():
    mask = rasterize_polygons([[2, 1, 9, 1, 9, 5, 2, 5], [20, 10, 22, 10, 22, 12]], H, W)
    np.testing.assert_array_equal(mask[1:6, 2:10], True)
    assert mask[:, :10].sum() == 8 * 5 and mask[10:13, 20:23].any()


@pytest.mark.parametrize(
    "segmentation",
    [
        [[1, 2, 3]],
        [[1, 2, "x", 4, 5, 6]],
        {"size": [2, 2], "counts": [1, 2]},
        {"size": [2, 2], "counts": "5X1"},
        {"size": [2, 2], "counts": "\x7f"},
        {"size": "2x2", "counts": [4]},
        {"counts": [4]},
    ],
)
def test_undecodable_segmentation(segmentation):
    with pytest.raises(MaskError):
        decode_coco_segmentation(segmentation, H, W)


# (label, caption, mentioned): whole words, any case, plural; punctuation taken literally.
MENTIONS = [
    ("dog", "Two DOGS on a sofa", True),
    ("cat", "a category of things", False),
    ("cat", "a cat.", True),
    ("cat", "concatenate", False),
    ("box", "three boxes", True),
    ("c++", "a c++ book", True),
    ("c++", "a cc book", False),
    ("a.b", "axb", False),
    ("bear", "polar\nbear", True),
]


@pytest.mark.parametrize("label,caption,mentioned", MENTIONS)
def test_label_matching_is_one_rule_for_builder_and_reader(label, caption, mentioned):
    """The builder (Python `re`) and the reader (TensorFlow RE2) decide alike."""
    assert label_in_caption(label, caption) is mentioned
    reader = filters.labels_in_caption(tf.constant([label]), tf.constant(caption))
    assert bool(reader[0]) is mentioned


def test_label_matching():
    assert label_in_caption("teddy bear", "a teddy  bear and a box")
    assert not bool(
        filters.labels_in_caption(tf.constant(["teddy bear"]), tf.constant("a teddy bear"))[0]
    )
    assert choose_caption(["a sofa", "a dog on a sofa", "a dog"], ["dog", "sofa", "dog"]) == (
        "a dog on a sofa"
    )


# --- input formats ----------------------------------------------------------------------------


def _coco(tmp_path: Path, **overrides) -> CocoSource:
    """Three images: polygon masks, an uncompressed and a compressed RLE, a crowd region."""
    images = [
        {"id": i, "file_name": f"im{i}.jpg", "width": W, "height": H, "data": image_bytes(W, H, i)}
        for i in (1, 2, 3)
    ]
    images[2]["file_name"] = "im3.png"
    images[2]["data"] = image_bytes(W, H, 3, "PNG")
    square = rect_mask(H, W, (4, 4, 12, 12))
    annotations = [
        {"image_id": 1, "category": "dog", "bbox": [2, 1, 7, 4], "segmentation": [[2, 1, 9, 1, 9, 5, 2, 5]]},
        {"image_id": 1, "category": "ball", "bbox": [20, 10, 2, 2], "segmentation": [[20, 10, 22, 10, 22, 12]]},
        {"image_id": 2, "category": "cat", "bbox": [4, 4, 8, 8], "segmentation": {"size": [H, W], "counts": rle_counts(square)}},
        {"image_id": 2, "category": "cat", "bbox": [0, 0, 8, 8], "iscrowd": 1, "segmentation": {"size": [H, W], "counts": rle_counts(square)}},
        {"image_id": 3, "category": "cat", "bbox": [4, 4, 8, 8], "segmentation": {"size": [H, W], "counts": rle_string(rle_counts(square))}},
    ]  # fmt: skip
    captions = {
        1: ["a dog", "a dog with a ball"],
        2: ["two cats sleeping"],
        3: ["a cat"],
        **overrides.get("captions", {}),
    }
    return CocoSource(*write_coco(tmp_path, images, annotations, captions))


def test_coco_build(tmp_path, clip):
    result = build(_coco(tmp_path), tmp_path / "out", num_shards=2)
    assert len(result.files) == 2
    records = by_key(read_records(result.files))
    assert sorted(records) == ["im1.jpg", "im2.jpg", "im3.png"]

    dog = records["im1.jpg"]
    assert dog["caption"] == b"a dog with a ball"
    assert list(dog["caption/ids"]) == tok.caption_ids(clip, "a dog with a ball")
    assert list(dog["entities/label"]) == [b"dog", b"ball"]
    np.testing.assert_array_equal(dog["entities/box"], [2, 1, 9, 5, 20, 10, 22, 12])
    np.testing.assert_array_equal(dog["entities/score"], [1.0, 1.0])
    assert list(dog["entities/clause_length"]) == [5, 5]
    expected = tok.clause_ids(clip, "dog") + tok.clause_ids(clip, "ball")
    assert list(dog["entities/clause_ids"]) == expected
    assert schema.decode_mask_png(dog["entities/mask"][0])[1:6, 2:10].all()
    assert dog["image/format"] == b"jpeg" and (dog["image/height"], dog["image/width"]) == (H, W)
    assert tf.io.decode_jpeg(dog["image/encoded"]).shape == (H, W, 3)

    square = rect_mask(H, W, (4, 4, 12, 12))
    for key in ("im2.jpg", "im3.png"):  # uncompressed and compressed RLE, crowd left out
        record = records[key]
        assert list(record["entities/label"]) == [b"cat"]
        np.testing.assert_array_equal(schema.decode_mask_png(record["entities/mask"][0]), square)
    assert records["im3.png"]["image/format"] == b"png"
    assert result.report.examples == 3 and result.report.entities == 4
    assert result.report.skipped_entities == {Reason.CROWD.value: 1}

    builder = tfds.builder(DATASET_NAME, data_dir=str(tmp_path / "out"))
    dataset = builder.as_dataset(split=tfds.split_for_jax_process("train"))
    keys = sorted(x["image/key"].decode() for x in tfds.as_numpy(dataset))
    assert keys == sorted(records)


def test_label_not_in_caption(tmp_path):
    source = _coco(tmp_path, captions={2: ["a sleeping animal"]})
    kept = _run(source, BuildOptions())
    assert kept.skipped_images == {Reason.TOO_FEW_ENTITIES.value: 1}
    assert kept.skipped_entities[Reason.LABEL_NOT_IN_CAPTION.value] == 1
    relaxed = _run(source, BuildOptions(require_label_in_caption=False))
    assert (
        relaxed.examples == 3 and Reason.LABEL_NOT_IN_CAPTION.value not in relaxed.skipped_entities
    )


def _sdd_sample(index_map: np.ndarray, **json_fields) -> dict[str, bytes]:
    meta = {
        "caption": "a dog and a cat",
        "mask": [
            {"value": 0, "label": "background"},
            {"value": 1, "label": "dog", "logit": 0.75, "box": [2.0, 1.0, 10.0, 6.0]},
            {"value": 2, "label": "cat", "logit": 0.5, "box": [12.0, 8.0, 20.0, 20.0]},
        ],
        **json_fields,
    }
    return {
        "jpg": image_bytes(W, H, 7),
        "txt": b"alt text of a cat",
        "json": json.dumps(meta).encode(),
        "png": png_bytes(index_map, "P"),
    }


def _index_map() -> np.ndarray:
    index = np.zeros((H, W), np.uint8)
    index[1:6, 2:10] = 1
    index[8:20, 12:20] = 2
    return index


def test_sdd_tar_build(tmp_path):
    index = _index_map()
    tar = write_tar(
        tmp_path / "00000.tar",
        [("a/0001", _sdd_sample(index)), ("a/0002", _sdd_sample(index, caption=""))],
    )
    result = build(SddTarSource((tar,)), tmp_path / "out")
    records = by_key(read_records(result.files))
    assert sorted(records) == ["00000.tar/a/0001", "00000.tar/a/0002"]
    first = records["00000.tar/a/0001"]
    assert first["caption"] == b"a dog and a cat"
    assert list(first["entities/label"]) == [b"dog", b"cat"]
    np.testing.assert_allclose(first["entities/score"], [0.75, 0.5])
    np.testing.assert_array_equal(first["entities/box"], [2, 1, 10, 6, 12, 8, 20, 20])
    for i, value in enumerate((1, 2)):
        mask = schema.decode_mask_png(first["entities/mask"][i])
        np.testing.assert_array_equal(mask, index == value)
    # An empty json caption falls back to the txt alt text, which names only the cat.
    second = records["00000.tar/a/0002"]
    assert second["caption"] == b"alt text of a cat" and list(second["entities/label"]) == [b"cat"]


def test_manifest_build(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "dog.png").write_bytes(png_bytes(rect_mask(H, W, (2, 1, 10, 6)) * 255))
    (tmp_path / "img.jpg").write_bytes(image_bytes(W, H, 11))
    line = {
        "image": "img.jpg",
        "caption": "a dog on a rug",
        "entities": [
            {"label": "dog", "box": [2, 1, 10, 6], "mask": "m/dog.png", "score": 0.9},
            {"label": "rug", "box": [0, 12, 32, 24], "polygon": [0, 12, 31, 12, 31, 23, 0, 23]},
        ],
    }
    manifest = write_manifest(tmp_path / "set.jsonl", [line, {**line, "key": "second"}])
    result = build(ManifestSource((manifest,)), tmp_path / "out")
    records = by_key(read_records(result.files))
    assert sorted(records) == ["img.jpg", "second"]
    record = records["img.jpg"]
    np.testing.assert_allclose(record["entities/score"], [0.9, 1.0])
    masks = [schema.decode_mask_png(m) for m in record["entities/mask"]]
    np.testing.assert_array_equal(masks[0], rect_mask(H, W, (2, 1, 10, 6)))
    assert masks[1][12:24].all() and not masks[1][:12].any()


# --- bad input --------------------------------------------------------------------------------


def _run(source, options: BuildOptions) -> Report:
    report = Report()
    for unit in source.units():
        for outcome in process_unit(source, unit, options):
            report.add(outcome)
    return report


def _bad_manifest(tmp_path: Path, bad: str) -> str:
    """A manifest whose second line holds one kind of bad input."""
    (tmp_path / "good.jpg").write_bytes(image_bytes(W, H, 1))
    (tmp_path / "broken.jpg").write_bytes(image_bytes(W, H, 2)[:-200])
    (tmp_path / "small.png").write_bytes(png_bytes(np.ones((H // 2, W // 2)) * 255))
    (tmp_path / "garbage.png").write_bytes(b"not a png at all")
    good = {"label": "dog", "box": [1, 1, 8, 8], "polygon": [1, 1, 8, 1, 8, 8]}
    bad_entity = {
        "box outside": {**good, "box": [1, 1, W + 5, 8]},
        "zero area": {**good, "box": [4, 4, 4, 9]},
        "mask size": {"label": "dog", "box": [1, 1, 8, 8], "mask": "small.png"},
        "undecodable": {"label": "dog", "box": [1, 1, 8, 8], "mask": "garbage.png"},
    }
    line = {"image": "good.jpg", "caption": "a dog", "entities": [good]}
    second = (
        {**line, "image": "broken.jpg", "key": "b"}
        if bad == "corrupt image"
        else {**line, "key": "b", "entities": [good, bad_entity[bad]]}
    )
    return write_manifest(tmp_path / "bad.jsonl", [line, second])


BAD_INPUT = {
    "corrupt image": (Reason.CORRUPT_IMAGE, False),
    "box outside": (Reason.BOX_OUTSIDE, True),
    "zero area": (Reason.BOX_EMPTY, True),
    "mask size": (Reason.MASK_SIZE, True),
    "undecodable": (Reason.UNDECODABLE_MASK, True),
}


@pytest.mark.parametrize("bad", sorted(BAD_INPUT))
def test_bad_input_is_counted_or_raised(tmp_path, bad):
    reason, entity_level = BAD_INPUT[bad]
    source = ManifestSource((_bad_manifest(tmp_path, bad),))
    report = _run(source, BuildOptions())
    counts = report.skipped_entities if entity_level else report.skipped_images
    assert counts == {reason.value: 1}
    assert report.examples == (2 if entity_level else 1)
    assert any("bad.jsonl: record line 2" in m and reason.value in m for m in report.first_skips)
    with pytest.raises(InputError, match=rf"bad\.jsonl: record line 2: .*{reason.value}"):
        _run(source, BuildOptions(strict=True))


def test_bad_coco_and_tar_input(tmp_path):
    source = _coco(tmp_path)
    instances = json.loads(Path(source.instances).read_text())
    instances["images"][0]["height"] = H + 1  # polygons drawn at the declared size mismatch
    instances["annotations"][2]["segmentation"]["counts"] = [1, 2]
    Path(source.instances).write_text(json.dumps(instances))
    report = _run(source, BuildOptions())
    assert report.skipped_entities == {
        Reason.MASK_SIZE.value: 2,
        Reason.UNDECODABLE_MASK.value: 1,
        Reason.CROWD.value: 1,
    }
    with pytest.raises(InputError, match=r"instances_t\.json: record image id 1 \(im1\.jpg\)"):
        _run(source, BuildOptions(strict=True))

    tar = write_tar(
        tmp_path / "bad.tar",
        [
            ("s1", {**_sdd_sample(_index_map()), "png": b"broken"}),
            ("s2", {"jpg": image_bytes(W, H, 1)}),
            ("s3", {**_sdd_sample(_index_map()), "json": b"{not json"}),
        ],
    )
    report = _run(SddTarSource((tar,)), BuildOptions())
    assert report.skipped_entities == {Reason.UNDECODABLE_MASK.value: 2}
    assert report.skipped_images == {Reason.MALFORMED.value: 2, Reason.TOO_FEW_ENTITIES.value: 1}
    with pytest.raises(InputError, match=r"bad\.tar: record bad\.tar/s1: entity skipped"):
        _run(SddTarSource((tar,)), BuildOptions(strict=True))


def test_cli_report_and_strict(tmp_path, capsys):
    manifest = _bad_manifest(tmp_path, "mask size")
    args = ["jsonl", "--manifests", manifest, "--data_dir", str(tmp_path / "out")]
    cli.main(args)
    printed = capsys.readouterr().out
    assert "examples written: 2" in printed and f"{Reason.MASK_SIZE.value}: 1" in printed
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args[:-1], str(tmp_path / "strict"), "--strict"])
    assert exit_info.value.code == 1
    assert "bad.jsonl: record line 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0 and "coco" in capsys.readouterr().out


# --- sample set, Beam, determinism ------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    return build_sample_records(tmp_path_factory.mktemp("sample"))


def test_sample_set(sample_files, clip):
    records = read_records(sample_files)
    assert len(sample_files) == 2 and len(records) == 7
    assert sum(len(r["entities/label"]) for r in records) == 19
    for record in records:
        assert record["image/format"] == b"jpeg"
        assert max(record["image/height"], record["image/width"]) <= 384
        for i, mask in enumerate(record["entities/mask"]):
            decoded = schema.decode_mask_png(mask)
            assert decoded.shape == (record["image/height"], record["image/width"])
            x0, y0, x1, y1 = record["entities/box"][4 * i : 4 * i + 4]
            ys, xs = np.nonzero(decoded)
            assert abs(xs.min() - x0) <= 1 and abs(ys.min() - y0) <= 1 and abs(xs.max() - x1) <= 1
    sample_dir = REPO / "data" / "sample"
    size = sum(p.stat().st_size for p in sample_dir.rglob("*") if p.is_file())
    assert size < 1_500_000
    licence = (sample_dir / "LICENSE.md").read_text()
    assert all(p.name in licence for p in (sample_dir / "images").iterdir())


def test_beam_direct_runner(tmp_path, sample_files):
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    result = build(
        sample_source(), tmp_path, num_shards=2, beam_runner="DirectRunner", beam_options=options
    )
    assert result.report.examples == 7 and result.report.entities == 19
    assert not result.report.skipped_images and not result.report.skipped_entities
    beam_records = [r.numpy() for r in tf.data.TFRecordDataset(result.files)]
    local_records = [r.numpy() for r in tf.data.TFRecordDataset(sample_files)]
    assert beam_records == local_records

    # Skips reach the report through the Beam counters.
    source = ManifestSource((_bad_manifest(tmp_path, "mask size"),))
    result = build(source, tmp_path / "bad", beam_runner="DirectRunner", beam_options=options)
    assert result.report.examples == 2 and result.report.entities == 2
    assert result.report.skipped_entities == {Reason.MASK_SIZE.value: 1}


def test_builds_are_byte_identical(tmp_path, sample_files):
    # A second build in a fresh process, through the script: tfds' own serializer would order
    # the features differently there.
    script = REPO / "data" / "build_sample.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)
    rebuilt = sorted((tmp_path / DATASET_NAME).rglob("*.tfrecord-*"))
    assert [p.name for p in rebuilt] == [Path(f).name for f in sample_files]
    for new, old in zip(rebuilt, sample_files, strict=True):
        assert new.read_bytes() == Path(old).read_bytes()
