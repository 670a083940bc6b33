"""DreamBench evaluation parts without models: the prompts file, layouts, preprocessing against
transformers' image processor, and the averaging and pairing of the scores by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import transformers
from PIL import Image

from sdjax.eval.dreambench import (
    DreamBenchError,
    parse_prompts_and_classes,
    prompt_text,
    read_dreambench,
    read_pairs,
)
from sdjax.eval.layouts import own_layout, random_layout
from sdjax.eval.metrics import cosine_matrix, mean_cosine_to_set, paired_cosine
from sdjax.eval.preprocess import encoder_input
from sdjax.eval.scores import ImageScore, aggregate

PROMPTS_AND_CLASSES = """Classes

subject_name,class
backpack,backpack
bear_plushie,stuffed animal
dog,dog


Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a red {0} {1}'.format(unique_token, class_token),
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
]
"""
LAYOUT = dict(live_classes=("dog",), image_suffixes=(".jpg", ".png"), mask_folder="masks")


def test_prompts_and_classes_file_is_parsed():
    classes, objects, live = parse_prompts_and_classes(PROMPTS_AND_CLASSES)
    assert classes == {"backpack": "backpack", "bear_plushie": "stuffed animal", "dog": "dog"}
    assert objects == ["a {0} {1} in the jungle", "a red {0} {1}"]
    assert live[1] == "a {0} {1} wearing a red hat"
    assert prompt_text(objects[1], "stuffed animal") == "a red stuffed animal"
    assert prompt_text(live[0], "backpack and a dog") == "a backpack and a dog in the jungle"


def make_bench(root, subjects: dict[str, int]):
    (root / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES)
    for name, count in subjects.items():
        (root / name).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8)).save(root / name / f"{i:02d}.jpg")


def test_bad_dreambench_folders_are_named(tmp_path):
    make_bench(tmp_path, {"dog": 1, "backpack": 0})
    with pytest.raises(DreamBenchError, match=r"backpack has no images"):
        read_dreambench(tmp_path, **LAYOUT)
    (tmp_path / "backpack" / "00.jpg").write_bytes(b"")
    (tmp_path / "teapot").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "teapot" / "00.png")
    with pytest.raises(DreamBenchError, match=r"subject 'teapot' has no class.*'teapot,<class"):
        read_dreambench(tmp_path, **LAYOUT)
    with pytest.raises(DreamBenchError, match="no prompts_and_classes.txt"):
        read_dreambench(tmp_path / "dog", **LAYOUT)


def test_pairs_file(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# comment\ndog,backpack\n\n")
    assert read_pairs(path, ["dog", "backpack"]) == [("dog", "backpack")]
    path.write_text("dog,teapot\n")
    with pytest.raises(
        DreamBenchError, match=r"pairs.txt:1: 'dog,teapot' unknown subjects \['teapot'\]"
    ):
        read_pairs(path, ["dog", "backpack"])


def test_shipped_pairs_name_dreambench_subjects():
    from sdjax.eval.__main__ import DEFAULT_PAIRS

    subjects = "backpack backpack_dog bear_plushie berry_bowl can candle cat cat2 clock colorful_sneaker dog dog2 dog3 dog5 dog6 dog7 dog8 duck_toy fancy_boot grey_sloth_plushie monster_toy pink_sunglasses poop_emoji rc_car red_cartoon robot_toy shiny_sneaker teapot vase wolf_plushie"
    pairs = read_pairs(DEFAULT_PAIRS, subjects.split())
    assert len(pairs) == len(set(pairs)) == 30


def test_random_layout_follows_the_authors_ranges():
    boxes = [random_layout((0, i), 1, (210, 280), (10, 200), 512)[0] for i in range(200)]
    x0, y0, x1, y1 = np.asarray(boxes).T * 512
    assert x0.min() >= 10 and x0.max() <= 200 and y0.min() >= 10 and y0.max() <= 200
    assert (x1 - x0).min() >= 210 and (x1 - x0).max() <= 280 and (y1 - y0).min() >= 210
    assert random_layout((0, 3), 1, (210, 280), (10, 200), 512) == random_layout(
        (0, 3), 1, (210, 280), (10, 200), 512
    )
    left, right = random_layout((1, 0), 2, (210, 280), (10, 200), 512)
    assert left[2] <= 0.5 <= right[0]


def test_own_layout_jitters_within_the_image_keeping_size():
    own = (0.9, 0.0, 1.0, 0.5)
    for i in range(50):
        (box,) = own_layout((0, i), [own], 0.05)
        assert box[0] >= 0.0 and box[2] <= 1.0 and box[1] >= 0.0
        assert math.isclose(box[2] - box[0], 0.1) and math.isclose(box[3] - box[1], 0.5)
    (whole,) = own_layout((0, 0), [None], 0.0)
    assert whole == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("resize,crop", [(224, 224), (256, 224)])
def test_preprocessing_matches_transformers_image_processor(resize, crop):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": resize},
        crop_size={"height": crop, "width": crop},
        image_mean=mean,
        image_std=std,
    )
    expected = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    got = encoder_input(image, resize, crop, mean, std)
    assert got.shape == (crop, crop, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cosines_by_hand():
    generated = np.array([[1.0, 0.0], [0.0, 2.0]])
    real = np.array([[3.0, 0.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(cosine_matrix(generated, real), [[1.0, r], [0.0, r]], atol=1e-6)
    np.testing.assert_allclose(mean_cosine_to_set(generated, real), [(1 + r) / 2, r / 2], atol=1e-6)
    np.testing.assert_allclose(paired_cosine(generated, real), [1.0, r], atol=1e-6)


def test_averaging_weighs_each_subject_the_same():
    def score(key, prompt, value):
        return ImageScore(key, prompt, f"{key}-{prompt}-{value}", {"dino": value})

    scores = [
        score("a", "p1", 0.2),
        score("a", "p1", 0.4),
        score("a", "p2", 0.9),
        score("b", "p1", 0.5),
    ]
    summary = aggregate(scores, ["dino"])
    assert summary.per_prompt["a", "p1"] == pytest.approx({"dino": 0.3, "images": 2})
    assert summary.per_subject["a"] == pytest.approx({"dino": 0.5, "images": 3})
    assert summary.per_subject["b"] == pytest.approx({"dino": 0.5, "images": 1})
    assert summary.overall["dino"] == pytest.approx(0.5)
    skewed = aggregate([*scores, score("b", "p2", 0.1)], ["dino"])
    assert skewed.overall["dino"] == pytest.approx((0.5 + 0.3) / 2)
    assert skewed.overall["dino"] != pytest.approx(np.mean([0.2, 0.4, 0.9, 0.5, 0.1]))


def test_two_subject_pairing_scores_each_subject_against_its_own_images(tmp_path):
    from sdjax.eval.dreambench import DreamSubject
    from sdjax.eval.measure import subject_mean
    from sdjax.eval.tasks import Task

    a, b = (DreamSubject(n, n, False, (), {}) for n in ("a", "b"))
    task = Task(0, "a+b", (a, b), 0, "a and a b", 0, tmp_path / "x.png")
    real = {
        "a": {"dino": np.array([[1.0, 0.0], [0.0, 1.0]])},  # cosines 1 and 0: mean 0.5
        "b": {"dino": np.array([[-1.0, 0.0]])},  # cosine -1
    }
    assert subject_mean(np.array([1.0, 0.0]), task, real, "dino") == pytest.approx(-0.25)
