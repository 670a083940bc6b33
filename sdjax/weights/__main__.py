"""Inspect a weights folder: what it holds and what sdjax would load from it.

    python -m sdjax.weights inspect PATH

PATH: a diffusers Stable Diffusion folder (unet/ vae/ text_encoder/ tokenizer/), one of those
component folders, a transformers CLIP vision folder, or an sdjax export. Exit code 1 when PATH
is missing or any part of it cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open

from sdjax.weights.clip import load_image_encoder, load_text_encoder
from sdjax.weights.core import WeightLoadError
from sdjax.weights.subject_diffusion import CONFIG_FILE, SUBJECT_MODULES_FILE
from sdjax.weights.unet import load_unet
from sdjax.weights.vae import load_vae

CANNOT_LOAD = "cannot load:"
COMPONENTS: dict[str, Callable] = {
    "unet": load_unet,
    "vae": load_vae,
    "text_encoder": load_text_encoder,
    "image_encoder": load_image_encoder,
}
CLASS_TO_COMPONENT = {
    "UNet2DConditionModel": "unet",
    "AutoencoderKL": "vae",
    "CLIPTextModel": "text_encoder",
    "CLIPVisionModelWithProjection": "image_encoder",
    "CLIPModel": "image_encoder",
}


def tensor_summary(files: list[Path]) -> str:
    """Tensor count, parameter count and dtypes of safetensors files, read from their headers."""
    count, params, dtypes = 0, 0, Counter()
    for file in files:
        with safe_open(str(file), framework="numpy") as f:
            names = f.keys()
            for key in names:
                info = f.get_slice(key)
                count += 1
                params += math.prod(info.get_shape())
                dtypes[info.get_dtype()] += 1
    kinds = ", ".join(f"{d} ×{n}" for d, n in sorted(dtypes.items()))
    return f"{count} tensors, {params / 1e6:.2f}M parameters ({kinds})"


def component_of(folder: Path) -> str | None:
    """Which sdjax part a folder with a config.json holds."""
    config = json.loads((folder / "config.json").read_text())
    names = [config.get("_class_name"), *config.get("architectures", [])]
    return next((CLASS_TO_COMPONENT[n] for n in names if n in CLASS_TO_COMPONENT), None)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def inspect(path: Path) -> list[str]:
    """The report's lines."""
    if not path.exists():
        raise FileNotFoundError(f"no such folder: {path}")
    folders = {name: path / name for name in COMPONENTS if (path / name / "config.json").exists()}
    if not folders and (path / "config.json").exists():
        name = component_of(path)
        if name is None:
            raise ValueError(f"{path / 'config.json'} names no model sdjax knows")
        folders = {name: path}
    lines = [f"{path}" + (" (sdjax export)" if (path / CONFIG_FILE).exists() else "")]
    if (path / "tokenizer").is_dir():
        lines.append(
            "  tokenizer/: used for prompts ("
            + ", ".join(sorted(p.name for p in (path / "tokenizer").iterdir()))
            + ")"
        )
    if (path / SUBJECT_MODULES_FILE).exists():
        lines.append(f"  {SUBJECT_MODULES_FILE}: {tensor_summary([path / SUBJECT_MODULES_FILE])}")
    collect = _Collect()
    logger = logging.getLogger("sdjax.weights.core")
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    for name, folder in folders.items():
        files = sorted(folder.glob("*.safetensors"))
        held = tensor_summary(files) if files else "no safetensors file"
        lines.append(f"  {name}/: {held}")
        collect.lines.clear()
        try:
            COMPONENTS[name](folder)
            lines += [f"    would load: {line}" for line in collect.lines]
        except (WeightLoadError, ValueError, FileNotFoundError) as err:
            lines += [f"    {CANNOT_LOAD} {line}" for line in str(err).splitlines()]
    logger.removeHandler(collect)
    if len(lines) == 1:
        lines.append("  nothing sdjax can load (no unet/, vae/, text_encoder/, image_encoder/)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sdjax.weights", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("inspect", help="what a folder holds and what would be loaded")
    show.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        lines = inspect(args.path)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 1 if any(CANNOT_LOAD in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
