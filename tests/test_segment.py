"""Cutting subjects out at sampling: a SAM segmenter prompted with the box and four inner points."""

from __future__ import annotations

import json
import warnings

import jax
import numpy as np
import pytest
import torch
import transformers
from annotation_models import save_sam
from PIL import Image
from scipy import ndimage
from test_sampling import load_model, save_tiny_parts, tiny_config

import sample
from sdjax.sampling import Subject, SubjectDiffusionPipeline
from sdjax.sampling.segment import ModelFolderError, SamSegmenter, export_segmenter, inner_points
from sdjax.sampling.subjects import read_subject, reference_image

WIDTH, HEIGHT = 90, 60
BOX = (0.1, 0.2, 0.7, 0.9)  # pixels 9, 12, 63, 54: sides 54 and 42, thirds 18 and 14
PIXEL_BOX = [9.0, 12.0, 63.0, 54.0]
AUTHORS_POINTS = [[27, 26], [45, 26], [27, 40], [45, 40]]


@pytest.fixture(scope="module")
def sam_folder(tmp_path_factory):
    return save_sam(tmp_path_factory.mktemp("sam"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("photo") / "toy.png"
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def expected_mask(sam_folder, photo):
    """SAM called directly through transformers with the reference code's prompt, holes filled."""
    processor = transformers.SamProcessor.from_pretrained(sam_folder)
    model = transformers.SamModel.from_pretrained(sam_folder).eval()
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    inputs = processor(
        images=pixels,
        input_boxes=[[PIXEL_BOX]],
        input_points=[[AUTHORS_POINTS]],
        input_labels=[[[1, 1, 1, 1]]],
        return_tensors="pt",
    )
    with torch.no_grad():
        predicted = model(**inputs, multimask_output=False).pred_masks
    mask = processor.image_processor.post_process_masks(
        predicted, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0][0, 0].numpy()
    assert 0 < mask.mean() < 1  # a real cut: some pixels in, some out
    return ndimage.binary_fill_holes(mask)


def test_inner_points_are_the_authors():
    np.testing.assert_array_equal(inner_points(PIXEL_BOX), AUTHORS_POINTS)


def test_segmenter_matches_sam_with_the_authors_prompt(sam_folder, photo, expected_mask):
    pixels, mask = read_subject(Subject(photo, box=BOX), SamSegmenter(sam_folder))
    np.testing.assert_array_equal(mask, expected_mask)


@pytest.fixture(scope="module")
def pipe_parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    save_tiny_parts(folder)
    return load_model(folder), tiny_config()


def test_the_image_encoder_sees_the_cut_out(pipe_parts, sam_folder, photo, expected_mask):
    model, config = pipe_parts
    devices = jax.local_devices()[:1]
    segmented = SubjectDiffusionPipeline(
        model, config, devices=devices, segmenter=SamSegmenter(sam_folder)
    )
    subject = Subject(photo, box=BOX, label="toy")
    pixels = segmented._prepare("a toy", [subject], "", 1, 0, 1.0, True)[0][0, 0]
    raw = np.asarray(Image.open(photo).convert("RGB"))
    augment = config.data.augment
    size = pixels.shape[0]
    expected = reference_image(raw, expected_mask, BOX, size, augment.clip_mean, augment.clip_std)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    boxed = reference_image(raw, None, BOX, size, augment.clip_mean, augment.clip_std)
    assert np.abs(pixels - boxed).max() > 0.1

    plain = SubjectDiffusionPipeline(model, config, devices=devices)
    with pytest.warns(UserWarning, match="no mask and no segmenter"):
        without = plain._prepare("a toy", [subject], "", 1, 0, 1.0, True)[0][0, 0]
    np.testing.assert_allclose(without, boxed, atol=1e-6)


def test_sample_cli_saves_the_cut_out(sam_folder, photo, expected_mask, tmp_path):
    (subject,) = sample.load_subjects(
        [{"image": str(photo), "box": BOX, "label": "toy"}], SamSegmenter(sam_folder), tmp_path
    )
    np.testing.assert_array_equal(subject.mask, expected_mask)
    saved = np.asarray(Image.open(tmp_path / "subject_0_cutout.png"))
    raw = np.asarray(Image.open(photo).convert("RGB"))
    x0, y0, x1, y1 = (int(v) for v in PIXEL_BOX)  # cut to the box, white outside the mask
    np.testing.assert_array_equal(saved, np.where(expected_mask[..., None], raw, 255)[y0:y1, x0:x1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a segmenter, no notice
        sample.load_subjects([{"image": str(photo), "label": "toy"}], SamSegmenter(sam_folder))


def test_segmenter_folder_recorded_in_the_export_or_wrong(tmp_path, sam_folder):
    (tmp_path / "sdjax_config.json").write_text(json.dumps({"sampling": {"segmenter": "/m/sam"}}))
    assert export_segmenter(tmp_path) == "/m/sam"
    assert export_segmenter(tmp_path / "missing") == ""
    wrong = tmp_path / "blip"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(ModelFolderError, match="holds a 'blip' model; expected model type sam"):
        SamSegmenter(wrong)
