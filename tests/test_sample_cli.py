"""`sample.py`: images and a grid from an export folder; bad input is one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sample
from sdjax.export import export_model
from tests.test_sampling import activate, load_model, save_tiny_parts, tiny_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--steps", "2", "--height", "32", "--width", "48"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    parts = tmp_path_factory.mktemp("parts")
    save_tiny_parts(parts)
    return export_model(activate(load_model(parts)), tiny_config(), parts.parent / "export")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = {name: folder / f"{name}.png" for name in ("cat", "dog", "mask", "small_mask")}
    for name in ("cat", "dog"):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(paths[name])
    mask = np.zeros((40, 30), np.uint8)
    mask[5:35, 5:25] = 255
    Image.fromarray(mask).save(paths["mask"])
    Image.fromarray(mask[:20]).save(paths["small_mask"])
    return paths


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--checkpoint", "--subject", "--box", "--mask", "--label", "--use_bbox"):
        assert flag in result.stdout
    assert "runs/toy_world/export" in result.stdout


def test_writes_images_and_grid(export_dir, files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--checkpoint",
        str(export_dir),
        "--prompt",
        " ".join(["word"] * 80),
        "--subject",
        str(files["cat"]),
        "--box",
        "0.1,0.2,0.5,0.9",
        "--mask",
        str(files["mask"]),
        "--subject",
        str(files["dog"]),
        "--label",
        "puppy",
        "--crop",
        "0,0,0.5,1",
        "--num_images",
        "3",
        "--seed",
        "1",
        "--use_bbox",
        "False",
        "--out",
        str(out),
        *SMALL,
    ]
    assert sample.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: prompt" in err and "truncated to 77" in err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "image_000.png", "image_001.png", "image_002.png"]
    assert Image.open(out / "image_000.png").size == (48, 32)
    assert Image.open(out / "grid.png").size == (2 * 48, 2 * 32)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--subject", "{cat}", "--mask", "{small_mask}"], "is 30x20 but its image is 30x40"),
        (["--subject", "{missing}"], "cannot read subject image"),
        (["--subject", "{cat}", "--subject", "{dog}", "--subject", "{cat}"], "3 subjects"),
        (["--height", "30"], "height=30 must be a positive multiple of 4"),
        (["--batch_size", "3"], "batch_size=3"),
        (["--base_model", "{missing}"], "base model folder 'missing.png' not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(export_dir, files, extra, message, capsys):
    paths = {**{k: str(v) for k, v in files.items()}, "missing": "missing.png"}
    argv = ["--checkpoint", str(export_dir), "--prompt", "a cat"]
    argv += [arg.format(**paths) for arg in extra]
    assert sample.main(argv) == 1
    *notes, error = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("error: ") and message in error
    assert all(note.startswith("note: ") for note in notes)  # labels taken from file names


def test_bad_flags_exit_2(files, capsys):
    for argv, message in (
        (["--subject", str(files["cat"]), "--box", "0.1,0.2,1.5,0.9"], "1.5"),
        (["--subject", str(files["cat"]), "--box", "0.5,0.2,0.5,0.9"], "zero area"),
        (["--box", "0.1,0.2,0.5,0.9"], "before any --subject"),
        (["--interpolation", "0.5"], "2 comma-separated numbers"),
        (["--use_bbox", "maybe"], "use_bbox must be true or false"),
        (["--window", "0,2.5"], "two step indices"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            sample.main(["--prompt", "a cat", *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_real_process_reports_without_traceback(files, tmp_path):
    result = run_cli("--checkpoint", str(tmp_path / "none"), "--prompt", "a cat")
    assert result.returncode == 1
    assert "error: no exported model folder" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("--prompt", "a cat", "--subject", str(files["cat"]), "--box", "0,0,2,1")
    assert result.returncode == 2 and "outside [0, 1]" in result.stderr


def test_a_label_taken_from_the_file_name_is_announced(files, capsys):
    named, unnamed = sample.load_subjects(
        [{"image": str(files["dog"]), "label": "puppy"}, {"image": str(files["cat"])}]
    )
    assert (named.label, unnamed.label) == ("puppy", "cat")
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == [notes[0]] and "labelled 'cat'" in notes[0] and "--label" in notes[0]
