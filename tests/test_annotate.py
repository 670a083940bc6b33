"""data/annotate.py: raw photos -> captions, nouns, boxes, masks -> a manifest the builder reads.

The models are tiny random transformers folders (`annotation_models`); the steps' outputs are
checked against the same models called directly through transformers.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from annotation_models import save_all
from fixtures_data import by_key, read_records
from PIL import Image

from data import annotate as cli
from data import build
from data.annotation.boxes import nms
from data.annotation.inputs import list_images, open_image
from data.annotation.items import Drop, Dropped, Item
from data.annotation.models import MaskMaker, noun_prompt
from data.annotation.nouns import NounTagger, add_count_words
from data.annotation.options import AnnotateOptions
from data.annotation.run import annotate
from data.manifest import ManifestSource
from sdjax.input_pipeline import pipeline, schema
from sdjax.sampling.segment import ModelFolderError

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "data" / "sample" / "images"
MANIFEST = "manifest-00000-of-00001.jsonl"
DROPPED = "dropped-00000-of-00001.jsonl"
SUBSET = 3  # images of the Beam and resume runs


def lines(path: Path) -> dict[str, dict]:
    return {line["key"]: line for line in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run many times faster on one thread than on cores other jobs share."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def options(models):
    return AnnotateOptions(**{role: str(folder) for role, folder in models.items()})


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, options):
    """(out folder, report) of the in-process run on the bundled photos (in a sibling folder
    layout that the Beam and resume runs share, so relative image paths agree)."""
    out = tmp_path_factory.mktemp("annotated") / "out"
    return out, annotate(list_images([str(PHOTOS)]), options, out)


def test_end_to_end_on_the_bundled_photos(annotated, tmp_path):
    out, report = annotated
    manifest = lines(out / MANIFEST)
    assert report.kept == len(manifest) > 0 and report.kept + sum(report.dropped.values()) == 7
    assert report.entities == sum(len(line["entities"]) for line in manifest.values())
    result = build(ManifestSource((str(out / MANIFEST),)), tmp_path / "records")
    assert result.report.examples == len(manifest), result.report.summary()
    records = by_key(read_records(result.files))
    for key, line in manifest.items():
        record = records[key]
        assert record["caption"].decode() == line["caption"]
        labels = [label.decode() for label in record["entities/label"]]
        assert labels == [entity["label"] for entity in line["entities"]]
        stored = np.asarray(Image.open(out / line["entities"][0]["mask"])) > 0
        np.testing.assert_array_equal(schema.decode_mask_png(record["entities/mask"][0]), stored)
    # The training reader, strict (bad input raises), filters opened up for random boxes.
    config = pipeline.default_config(64)
    config.update(file_pattern=",".join(result.files), batch_size=1, strict=True)
    config.update(num_epochs=1, shuffle_buffer=1)
    config.filters.update(min_area_ratio=0.0, max_area_ratio=1.0, min_aspect=0.0, max_aspect=1e9)
    config.filters.update(min_score=0.0, min_mask_fill=0.0, max_overlap=1.0, min_box_area_px=0.0)
    config.filters.update(max_near_white_fraction=1.0)
    batches = list(pipeline.make_iterator(config, 0, 1))
    assert len(batches) == len(manifest)
    assert all(batch["subject_valid"].any() for batch in batches)


def test_steps_agree_with_the_models_called_directly(annotated, models):
    out, _ = annotated
    key, line = sorted(lines(out / MANIFEST).items())[0]
    image = Image.open(PHOTOS / key).convert("RGB")
    processor = transformers.AutoProcessor.from_pretrained(models["captioner"])
    blip = transformers.BlipForConditionalGeneration.from_pretrained(models["captioner"])
    with torch.no_grad():
        ids = blip.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=30)
    caption = re.findall(r"\w+", processor.decode(ids[0], skip_special_tokens=True))
    counts = {"two", "three", "four", "five", "six"}  # count words the manifest may add
    written = [word for word in re.findall(r"\w+", line["caption"]) if word not in counts]
    assert written == [word for word in caption if word not in counts]
    assert all(entity["label"] in caption for entity in line["entities"])

    sam_processor = transformers.SamProcessor.from_pretrained(models["segmenter"])
    sam = transformers.SamModel.from_pretrained(models["segmenter"])
    boxes = [[entity["box"] for entity in line["entities"]]]
    inputs = sam_processor(images=image, input_boxes=boxes, return_tensors="pt")
    with torch.no_grad():
        predicted = sam(**inputs, multimask_output=False).pred_masks
    masks = sam_processor.image_processor.post_process_masks(
        predicted, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0][:, 0].numpy()
    written_masks = [np.asarray(Image.open(out / e["mask"])) > 0 for e in line["entities"]]
    # Boxes are written to 2 decimals; a mask pixel may flip on that rounding.
    for expected, got in zip(masks, written_masks, strict=True):
        assert np.mean(expected != got) < 0.01


def test_beam_gives_the_same_manifest(annotated, options):
    from data.annotation.beam import annotate_beam

    out, _ = annotated
    beam_out = out.parent / "beam"
    refs = list_images([str(PHOTOS)])[:SUBSET]
    report = annotate_beam(refs, options, beam_out, "DirectRunner")
    (manifest,) = beam_out.glob("manifest-beam000-*.jsonl")
    beam_lines = lines(manifest)
    expected = {k: v for k, v in lines(out / MANIFEST).items() if k in {r.key for r in refs}}
    assert beam_lines == expected and report.kept == len(expected)
    for line in expected.values():
        for entity in line["entities"]:
            assert (beam_out / entity["mask"]).read_bytes() == (out / entity["mask"]).read_bytes()


def test_an_interrupted_run_resumes_without_duplicates(annotated, options):
    out, _ = annotated
    resumed = out.parent / "resumed"
    resumed.mkdir()
    refs = list_images([str(PHOTOS)])[:SUBSET]
    full = (out / MANIFEST).read_text().splitlines()
    first = json.loads(full[0])["key"]
    assert first == refs[0].key  # the run writes images in key order
    (resumed / MANIFEST).write_text(full[0] + "\n" + full[1][:40])  # cut mid-line
    report = annotate(refs, options, resumed)
    assert report.resumed == 1 and report.kept + sum(report.dropped.values()) == SUBSET - 1
    written = (resumed / MANIFEST).read_text().splitlines()
    keys = [json.loads(line)["key"] for line in written]
    assert len(keys) == len(set(keys))
    expected = {k: v for k, v in lines(out / MANIFEST).items() if k in {r.key for r in refs}}
    assert lines(resumed / MANIFEST) == expected
    again = annotate(refs, options, resumed)
    assert again.resumed == SUBSET and again.kept == 0


def test_nouns_of_fixed_captions(options):
    tagger = NounTagger(options)
    captions = {
        "a dog and a cat sitting on a wooden table": ("dog", "cat", "table"),
        "a man riding a bike down the street next to a bus": ("man", "bike", "street", "bus"),
        "two cups of coffee on a saucer with a spoon": ("cups", "coffee", "saucer", "spoon"),
        "red and blue": (),
    }
    items = [Item(str(i), Image.new("RGB", (1, 1)), caption=c) for i, c in enumerate(captions)]
    results = tagger(items)
    for _result, item, nouns in zip(results, items, captions.values(), strict=True):
        assert item.nouns == nouns
    assert [isinstance(r, Dropped) and r.reason for r in results] == [
        False,
        False,
        False,
        Drop.FEW_NOUNS,
    ]
    many = AnnotateOptions(**{**options.__dict__, "min_nouns": 1, "max_nouns": 2})
    assert NounTagger(many)(items[:1])[0].reason == Drop.MANY_NOUNS


def test_count_words():
    words = ["a", "dog", "and", "two", "cats", "on", "a", "table"]
    spaces = [" "] * 7 + [""]
    lemmas = ["a", "dog", "and", "two", "cat", "on", "a", "table"]
    counts = {"dog": 3, "cat": 2, "table": 1, "bird": 2}
    assert add_count_words(words, spaces, lemmas, counts) == "three dog and two cats on a table"
    assert add_count_words(["dogs"], [""], ["dog"], {"dog": 7}) == "dogs"  # seven: no word


def test_noun_prompt_and_nms():
    assert noun_prompt(["cat", "dog"]) == ("cat,dog.", [(0, 3), (4, 7)])
    boxes = np.asarray([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]], float)
    # IoU(0, 1) = 0.81 is suppressed, IoU(0, 3) = 0.5 is kept (not above the threshold).
    np.testing.assert_array_equal(nms(boxes, np.asarray([0.9, 0.95, 0.5, 0.4]), 0.5), [1, 2, 3])


def test_bad_input_is_counted_under_its_reason(options, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (100, 300)).save(photos / "tiny.png")
    refs = list_images([str(photos)])
    assert [open_image(r, options.min_side).reason for r in refs] == [Drop.UNREADABLE, Drop.TINY]
    cli.main([str(photos), "--out", str(tmp_path / "out"), *_model_flags(options)])
    report = capsys.readouterr().out
    assert "images kept: 0" in report and "unreadable image: 1" in report
    assert "image smaller than --min_side: 1" in report
    dropped = lines(tmp_path / "out" / DROPPED)
    assert {k: v["reason"] for k, v in dropped.items()} == {
        "broken.jpg": "UNREADABLE",
        "tiny.png": "TINY",
    }


def test_no_boxes_and_empty_masks_are_dropped(options):
    from data.annotation.models import Detector

    item = Item("k", Image.open(PHOTOS / "coffee.jpg").convert("RGB"), nouns=("cup", "table"))
    strict = AnnotateOptions(**{**options.__dict__, "box_threshold": 1.0})
    assert Detector(strict)([item])[0].reason == Drop.FEW_BOXES

    class Blank:
        def masks(self, pixels, boxes):
            out = np.zeros((len(boxes), *pixels.shape[:2]), bool)
            out[0, :2, :2] = True
            return out

    item.boxes, item.scores, item.labels = np.ones((3, 4)), np.ones(3), ("cup", "cup", "table")
    dropped = MaskMaker(options, Blank())([item])[0]
    assert dropped.reason == Drop.EMPTY_MASK and dropped.entity_drops == (Drop.EMPTY_MASK,) * 2


def _model_flags(options: AnnotateOptions, **swap: str) -> list[str]:
    roles = {role: getattr(options, role) for role in ("captioner", "detector", "segmenter")}
    return [f for role, path in {**roles, **swap}.items() for f in (f"--{role}", path)]


def test_a_model_folder_of_the_wrong_type_is_named(options, tmp_path, capsys):
    shutil.copy(PHOTOS / "coffee.jpg", tmp_path / "coffee.jpg")
    with pytest.raises(SystemExit):
        cli.main(
            [str(tmp_path / "coffee.jpg"), "--out", str(tmp_path / "out")]
            + _model_flags(options, captioner=options.segmenter)
        )
    error = capsys.readouterr().err
    assert "captioner folder" in error and "'sam' model" in error and "blip" in error
    with pytest.raises(ModelFolderError, match="no readable config.json"):
        MaskMaker(AnnotateOptions(**{**options.__dict__, "segmenter": str(tmp_path)})).load()
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path), "--out", "o", "--shard", "3/2", *_model_flags(options)])
    assert "0 <= i < n" in capsys.readouterr().err


def test_inputs_from_folders_lists_and_tars(tmp_path):
    import tarfile

    shutil.copy(PHOTOS / "coffee.jpg", tmp_path / "coffee.jpg")
    (tmp_path / "list.txt").write_text("coffee.jpg\n\n")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        tar.add(PHOTOS / "clock.jpg", arcname="0001.jpg")
        tar.add(tmp_path / "list.txt", arcname="0001.txt")
    refs = list_images([str(tmp_path / "list.txt"), str(tmp_path / "shard.tar")])
    assert [r.key for r in refs] == ["coffee.jpg", "shard/0001.jpg"]
    assert refs[1].read() == (PHOTOS / "clock.jpg").read_bytes()
    with pytest.raises(ValueError, match="'coffee.jpg' found twice"):
        list_images([str(tmp_path / "list.txt"), str(tmp_path / "coffee.jpg")])
