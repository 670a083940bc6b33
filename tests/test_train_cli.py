"""`python train.py` end to end: the bundled sample set, metrics, TensorBoard, samples, export."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from sdjax.sampling import SubjectDiffusionPipeline
from sdjax.weights.core import WeightLoadError

REPO = Path(__file__).resolve().parents[1]
STEPS = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli") / "run"
    command = [
        sys.executable,
        "train.py",
        "--config=tests/training_config.py",
        f"--workdir={workdir}",
        f"--config.train.num_steps={STEPS}",
        "--config.train.checkpoint_every=6",
        "--config.train.sample_every=6",
        "--config.optimizer.learning_rate=1e-3",
        "--config.optimizer.warmup_steps=0",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, done


def test_help_lists_flags():
    done = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert "--workdir" in done.stdout and "--config" in done.stdout  # absl's --help exits 1


def test_loss_falls_and_metrics_are_written(run):
    workdir, _ = run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert {"loss", "diffusion_loss", "attention_loss", "lr", "grad_norm"} <= set(records[0])
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first, (first, last)
    assert list((workdir / "tensorboard").glob("events.*"))


def test_samples_and_export_load_in_the_pipeline(run):
    workdir, done = run
    assert sorted(p.name for p in (workdir / "samples").iterdir()) == [
        "step_0000006.png",
        "step_0000012.png",
    ]
    assert "exported for sampling" in done.stdout
    pipe = SubjectDiffusionPipeline.from_pretrained(workdir / "export")
    images = pipe("a cup", num_images=1, steps=2)
    assert images[0].size == (32, 32)


def test_weights_inspect_reports_each_part(run, tmp_path):
    workdir, _ = run
    inspect = [sys.executable, "-m", "sdjax.weights", "inspect"]
    done = subprocess.run([*inspect, str(workdir / "export")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for part in ("UNet", "AutoencoderKL", "CLIPTextModel", "CLIPVisionModelWithProjection"):
        assert f"would load: {part}:" in done.stdout
    assert "(sdjax export)" in done.stdout and "0 kept at their initial value" in done.stdout
    missing = subprocess.run([*inspect, str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 1 and "no such folder" in missing.stderr


def test_export_guards_its_folder_and_a_3_channel_conv_in_is_refused(run, tmp_path):
    workdir, _ = run
    export = [sys.executable, "-m", "sdjax.export", str(workdir)]
    taken = subprocess.run([*export, str(workdir / "export")], capture_output=True, text=True)
    assert taken.returncode == 1 and "Traceback" not in taken.stderr
    assert taken.stderr.strip().endswith("already exists; pass --overwrite to replace it")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.json").write_text((workdir / "config.json").read_text())
    none = subprocess.run(
        [*export[:-1], str(empty), str(tmp_path / "x")], capture_output=True, text=True
    )
    assert none.returncode == 1 and "has no checkpoint to export" in none.stderr

    out = tmp_path / "edited"
    shutil.copytree(workdir / "export", out)
    for weights in out.rglob("*.safetensors"):
        assert weights.stat().st_mode & 0o044 == 0o044, f"{weights} is not readable by others"
    unet = out / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(unet))
    tensors["conv_in.weight"] = tensors["conv_in.weight"][:, :3].copy()
    save_file(tensors, str(unet))
    inspect = subprocess.run(
        [sys.executable, "-m", "sdjax.weights", "inspect", str(out)], capture_output=True, text=True
    )
    assert inspect.returncode == 1 and "cannot load:" in inspect.stdout
    assert "conv_in.weight: checkpoint (" in inspect.stdout
    with pytest.raises(WeightLoadError, match="conv_in.weight"):
        SubjectDiffusionPipeline.from_pretrained(out)
