"""Photos as users bring them: EXIF-rotated phone pictures, JPEGs damaged in the middle, an image
listed twice, inverted boxes; the builder and the sampler each take them as a viewer shows them."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import by_key, read_records, write_manifest
from PIL import Image, ImageOps

from data import build
from data.manifest import ManifestSource
from data.records import BuildOptions, DuplicateKeyError, Reason, Report, process_unit
from sdjax.images import EXIF_ORIENTATION
from sdjax.input_pipeline import schema
from sdjax.sampling import Subject
from sdjax.sampling.subjects import read_subject

REPO = Path(__file__).resolve().parents[1]
STORED_W, STORED_H = 78, 60  # pixels as the camera stored them
ROTATE_90_CW = 6  # EXIF orientation: displayed turned a quarter clockwise, so 60 wide, 78 high


def _phone_photo(path: Path) -> Image.Image:
    """A JPEG stored 78x60 with an orientation tag; returns the picture as displayed."""
    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((10, 10, 1)))[:STORED_H, :STORED_W]
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    Image.fromarray(pixels.astype(np.uint8)).save(path, "JPEG", quality=95, exif=exif)
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image)


def _report(source) -> Report:
    report = Report()
    for unit in source.units():
        for outcome in process_unit(source, unit, BuildOptions()):
            report.add(outcome)
    return report


def test_rotated_photo_is_built_and_sampled_upright(tmp_path):
    shown = _phone_photo(tmp_path / "phone.jpg")
    assert shown.size == (STORED_H, STORED_W)
    box = [5, 60, 55, 76]  # below y=60: only inside the photo as displayed (60 wide, 78 high)
    entity = {"label": "dog", "box": box, "polygon": [5, 60, 55, 60, 55, 76]}
    line = {"image": "phone.jpg", "caption": "a dog", "entities": [entity]}
    result = build(ManifestSource((write_manifest(tmp_path / "m.jsonl", [line]),)), tmp_path / "o")
    assert result.report.examples == 1 and result.report.entities == 1, result.report.summary()
    record = by_key(read_records(result.files))["phone.jpg"]
    assert (record["image/height"], record["image/width"]) == (STORED_W, STORED_H)
    built = np.asarray(Image.open(io.BytesIO(record["image/encoded"])).convert("RGB"))
    np.testing.assert_array_equal(built, np.asarray(shown.convert("RGB")))
    assert schema.decode_mask_png(record["entities/mask"][0]).shape == (STORED_W, STORED_H)

    pixels, _ = read_subject(Subject(str(tmp_path / "phone.jpg"), label="dog"))
    np.testing.assert_array_equal(pixels, np.asarray(shown.convert("RGB")))


def test_jpeg_zeroed_mid_file_is_skipped(tmp_path):
    _phone_photo(tmp_path / "ok.jpg")
    data = bytearray((tmp_path / "ok.jpg").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200] = bytes(200)
    (tmp_path / "zeroed.jpg").write_bytes(bytes(data))
    entity = {"label": "dog", "box": [1, 1, 8, 8], "polygon": [1, 1, 8, 1, 8, 8]}
    lines = [
        {"image": name, "caption": "a dog", "entities": [entity]}
        for name in ("ok.jpg", "zeroed.jpg")
    ]
    report = _report(ManifestSource((write_manifest(tmp_path / "m.jsonl", lines),)))
    assert report.examples == 1
    assert report.skipped_images == {Reason.CORRUPT_IMAGE.value: 1}
    assert any("line 2" in m and "Corrupt JPEG data" in m for m in report.first_skips)


def test_inverted_box_is_named_as_such(tmp_path):
    _phone_photo(tmp_path / "p.jpg")
    entity = {"label": "dog", "box": [40, 30, 10, 5], "polygon": [1, 1, 8, 1, 8, 8]}
    line = {"image": "p.jpg", "caption": "a dog", "entities": [entity]}
    report = _report(ManifestSource((write_manifest(tmp_path / "m.jsonl", [line]),)))
    assert report.skipped_entities == {Reason.BOX_INVERTED.value: 1}


def test_image_listed_twice_stops_before_the_build_or_is_kept_by_location(tmp_path):
    _phone_photo(tmp_path / "p.jpg")
    entity = {"label": "dog", "box": [1, 1, 8, 8], "polygon": [1, 1, 8, 1, 8, 8]}
    line = {"image": "p.jpg", "caption": "a dog", "entities": [entity]}
    other = {**line, "key": "other"}
    manifest = write_manifest(tmp_path / "m.jsonl", [line, other, line])
    with pytest.raises(DuplicateKeyError, match=r"'p\.jpg' at .*m\.jsonl line 1, .*line 3"):
        build(ManifestSource((manifest,)), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.tfrecord*"))

    command = [sys.executable, "data/build_tfrecords.py", "jsonl", "--manifests", manifest]
    done = subprocess.run(
        [*command, "--data_dir", str(tmp_path / "cli")], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: 1 record key(s)")
    assert "Traceback" not in done.stderr and "--keys=location" in done.stderr

    kept = build(
        ManifestSource((manifest,)), tmp_path / "both", options=BuildOptions(keys="location")
    )
    assert sorted(by_key(read_records(kept.files))) == [f"{manifest}:line {n}" for n in (1, 2, 3)]
    assert (
        "Unknown size"
        not in subprocess.run(
            [*command, "--keys=location", "--data_dir", str(tmp_path / "cli2")],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout
    )


def test_builder_cli_errors_are_one_line(tmp_path):
    command = [sys.executable, "data/build_tfrecords.py", "jsonl", "--data_dir", str(tmp_path)]
    nothing = subprocess.run(
        [*command, "--manifests", str(tmp_path / "none*.jsonl")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr
    assert (
        nothing.stderr.strip().splitlines()[-1] == f"error: no file matches {tmp_path}/none*.jsonl"
    )

    _phone_photo(tmp_path / "p.jpg")
    entity = {"label": "dog", "box": [1, 1, 8, 800], "polygon": [1, 1, 8, 1, 8, 8]}
    manifest = write_manifest(
        tmp_path / "m.jsonl", [{"image": "p.jpg", "caption": "a dog", "entities": [entity]}]
    )
    strict = subprocess.run(
        [*command, "--manifests", manifest, "--strict"], cwd=REPO, capture_output=True, text=True
    )
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert "m.jsonl: record line 1: entity skipped, box outside the image" in strict.stderr
