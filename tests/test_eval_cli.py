"""`python -m sdjax.eval` end to end: a DreamBench-layout fixture (2 subjects, 2 prompts) drawn
with a tiny export and scored with tiny random DINO and CLIP folders; resuming; bad input; the
toy world through the same command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from configs.toy_world import world_config
from data.toy_world import generate_world
from sdjax.eval.__main__ import main
from sdjax.eval.encoders import load_clip, load_dino
from sdjax.eval.measure import Embedder, real_features, score_tasks
from sdjax.eval.tasks import Task
from sdjax.export import export_model
from sdjax.toy_world.world import EvalSet, Look, Scene, Subject, write_eval_file
from tests.test_clip import TEXT, perturb_
from tests.test_eval_encoders import VIT
from tests.test_eval_metrics import make_bench
from tests.test_sampling import activate, load_model, save_tiny_parts, tiny_config

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # generated images and encoder inputs
CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=SIZE,
    patch_size=8,
)
OVERRIDES = [
    "--config.generation.images_per_prompt=2",
    "--config.generation.steps=2",
    f"--config.generation.height={SIZE}",
    f"--config.generation.width={SIZE}",
    "--config.generation.chunk=4",
    "--config.generation.batch_size=2",  # one compiled shape for every call
    "--config.mesh.data=2",
    "--config.metrics.batch_size=4",
    f"--config.metrics.dino.resize={SIZE + 4}",
    f"--config.metrics.dino.crop={SIZE}",
    f"--config.metrics.clip.resize={SIZE}",
    f"--config.metrics.clip.crop={SIZE}",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    parts = root / "parts"
    parts.mkdir()
    save_tiny_parts(parts)
    export = export_model(activate(load_model(parts)), tiny_config(), root / "export")
    torch.manual_seed(0)
    dino = perturb_(transformers.ViTModel(transformers.ViTConfig(**VIT)), seed=1)
    dino.save_pretrained(root / "dino")
    clip_config = transformers.CLIPConfig(
        text_config={**TEXT, "vocab_size": 49408, "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config=CLIP_VISION,
        projection_dim=16,
    )
    perturb_(transformers.CLIPModel(clip_config), seed=2).save_pretrained(root / "clip-tiny")
    bench = root / "dreambench"
    bench.mkdir()
    make_bench(bench, {"bear_plushie": 0, "dog": 0})
    rng = np.random.default_rng(0)
    for name in ("bear_plushie", "dog"):
        for i in range(2):
            pixels = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(bench / name / f"{i:02d}.jpg")
    (bench / "dog" / "02.jpg").write_bytes(b"not a jpeg")  # counted, skipped, reported
    (bench / "bear_plushie" / "masks").mkdir()
    mask = np.zeros((40, 36), np.uint8)
    mask[5:30, 8:28] = 255
    Image.fromarray(mask).save(bench / "bear_plushie" / "masks" / "00.png")
    return {
        "root": root,
        "export": export,
        "dino": root / "dino",
        "clip": root / "clip-tiny",
        "bench": bench,
    }


def argv(folders, out: Path, *extra: str) -> list[str]:
    return [
        "dreambench",
        "--data", str(folders["bench"]),
        "--export", str(folders["export"]),
        "--dino", str(folders["dino"]),
        "--clip", str(folders["clip"]),
        "--out", str(out),
        "--no_progress",
        *OVERRIDES,
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def single_run(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, main(argv(folders, out))


def test_writes_every_output(single_run):
    out, content = single_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(content))
    assert content["images_expected"] == content["images_scored"] == 2 * 2 * 2
    assert content["images_drawn_now"] == 8
    metrics = ["dino", "clip_i[clip-tiny]", "clip_t[clip-tiny]"]
    assert (
        content["metrics"] == metrics
        and "every generated image against every real" in content["pairing"]
    )
    for metric in metrics:
        assert -1.0 <= content["overall"][metric] <= 1.0
    assert content["unreadable_images"]["count"] == 1
    assert "02.jpg" in content["unreadable_images"]["files"][0]
    images = sorted(
        p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png")
    )
    assert images == [
        f"{s}/{p:02d}_{k:02d}.png" for s in ("bear_plushie", "dog") for p in (0, 1) for k in (0, 1)
    ]
    assert Image.open(out / "images" / "dog" / "00_00.png").size == (SIZE, SIZE)
    subject_rows = (out / "per_subject.csv").read_text().splitlines()
    assert subject_rows[0].startswith("subject,dino,") and len(subject_rows) == 3
    prompt_rows = (out / "per_prompt.csv").read_text().splitlines()
    assert len(prompt_rows) == 5 and "a dog wearing a red hat" in "".join(prompt_rows)
    assert "a red stuffed animal" in "".join(prompt_rows)  # object prompts for the plushie
    table = (out / "table.md").read_text()
    assert "| clip-tiny |" in table and "0.711" in table and "0.885" in table and "Pairing" in table
    for subject in ("bear_plushie", "dog"):  # reference row + 2 prompts x 2 images
        assert Image.open(out / "grids" / f"{subject}.png").size == (2 * SIZE, 3 * SIZE)


def test_a_second_run_skips_what_exists_and_a_resumed_run_draws_the_same(single_run, folders):
    out, first = single_run
    image = out / "images" / "dog" / "01_01.png"
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    original = np.asarray(Image.open(image))
    second = main(argv(folders, out))
    assert second["images_drawn_now"] == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert second["overall"] == pytest.approx(first["overall"], abs=1e-6)
    image.unlink()  # as if the run had stopped before it
    third = main(argv(folders, out))
    assert third["images_drawn_now"] == 1 and third["images_scored"] == 8
    assert np.abs(np.asarray(Image.open(image), np.int16) - original).max() <= 1
    assert not list(out.rglob("*.partial"))


def test_two_subject_mode(folders, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("bear_plushie,dog\n")
    out = tmp_path / "two"
    content = main(
        argv(folders, out, "--mode", "two", "--pairs", str(pairs),
             "--config.generation.images_per_prompt=1", "--config.generation.layout=own")
    )  # fmt: skip
    assert content["mode"] == "two" and list(content["per_subject"]) == ["bear_plushie+dog"]
    assert content["images_scored"] == 2
    prompts = {row["prompt"] for row in content["per_prompt"]}
    assert prompts == {"a stuffed animal and a dog in the jungle", "a red stuffed animal and a dog"}
    assert "0.506" in (out / "table.md").read_text()
    assert (out / "grids" / "bear_plushie+dog.png").is_file()


def test_identical_images_score_one(folders, tmp_path):
    dino, clip = load_dino(folders["dino"]), load_clip(folders["clip"])
    from configs.dreambench import get_config

    config = get_config().metrics
    config.dino.resize, config.dino.crop = SIZE + 4, SIZE
    config.clip.resize, config.clip.crop = SIZE, SIZE
    embedder = Embedder(dino, [clip], config)
    real_image = folders["bench"] / "dog" / "00.jpg"
    real = real_features(embedder, {"dog": [real_image]})
    from sdjax.eval.dreambench import DreamSubject

    dog = DreamSubject("dog", "dog", True, (real_image,), {})
    task = Task(0, "dog", (dog,), 0, "a dog", 0, real_image)
    (score,) = score_tasks(embedder, [task], real, progress=False)
    assert score.values["dino"] == pytest.approx(1.0, abs=1e-5)
    assert score.values["clip_i[clip-tiny]"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "change,message",
    [
        ("dino_is_clip", "'clip' model (config.json model_type); expected 'vit'"),
        ("missing_class", "subject 'teapot' has no class"),
        ("empty_subject", "has no images"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(folders, tmp_path, change, message, capsys):
    bench = tmp_path / "bench"
    shutil.copytree(folders["bench"], bench)
    args = argv({**folders, "bench": bench}, tmp_path / "out")
    if change == "dino_is_clip":
        args[args.index("--dino") + 1] = str(folders["clip"])
    elif change == "missing_class":
        shutil.copytree(bench / "dog", bench / "teapot")
    else:
        (bench / "cat").mkdir()
        (bench / "cat" / "notes.txt").write_text("no images")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err


def test_help_and_bad_override():
    env_root = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 120}
    result = subprocess.run([sys.executable, "-m", "sdjax.eval", "--help"], **env_root)
    assert result.returncode == 0 and "dreambench" in result.stdout and "toy" in result.stdout
    with pytest.raises(SystemExit) as exit_info:
        main(["dreambench", "--data", "x", "--export", "x", "--dino", "x", "--clip", "x",
              "--out", "x", "--config.generation.images_per_promt=2"])  # fmt: skip
    assert exit_info.value.code == 2


def test_toy_world_through_the_same_command(folders, tmp_path):
    scenes = {
        count: [
            Scene(
                "grass",
                tuple(
                    Subject("circle", Look("red", "solid"), (2 + 14 * i, 4, 14 + 14 * i, 20))
                    for i in range(count)
                ),
                seed,
            )
            for seed in range(2)
        ]
        for count in (1, 2)
    }
    world = tmp_path / "world"
    world.mkdir()
    write_eval_file(world / "eval.json", EvalSet(SIZE, 4.0, scenes))
    out = tmp_path / "toy"
    content = main(
        ["toy", "--export", str(folders["export"]), "--world", str(world), "--out", str(out),
         "--steps", "2", "--num_eval", "1"]
    )  # fmt: skip
    assert set(content["results"]) == {1, 2}
    assert set(content["results"][1]) >= {"location", "identity", "class", "scene"}
    assert (out / "grid_2.png").is_file()
    table = (out / "table.md").read_text()
    assert "| location | identity | class | scene |" in table.replace("subjects | ", "")


def test_binding_on_toy_world_records(folders, tmp_path):
    world = world_config()
    world.num_images, world.num_eval, world.num_shards = 24, 1, 1
    records = generate_world(world, tmp_path).record_files
    out = tmp_path / "binding"
    content = main(
        ["binding", "--export", str(folders["export"]), "--data", ",".join(records),
         "--batches", "2", "--timesteps", "900,100", "--out", str(out)]
    )  # fmt: skip
    rows = content["rows"]
    assert [r["timestep"] for r in rows] == [900, 100]
    for row in rows:
        assert row["tokens"] > 0 and 0 < row["own"] < 1 and 0.3 <= row["chance"] <= 0.7
    assert (out / "table.md").read_text().startswith("| timestep | own share |")
    with pytest.raises(SystemExit) as exit_info:
        main(["binding", "--export", str(folders["export"]), "--timesteps", "9x"])
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit) as exit_info:  # the schedule has timesteps 0 ... 999
        main(["binding", "--export", str(folders["export"]), "--data", ",".join(records),
              "--timesteps", "500,1000"])  # fmt: skip
    assert exit_info.value.code == 1
