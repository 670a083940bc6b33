"""Export a trained model as a self-contained inference folder.

    python -m sdjax.export WORKDIR OUT [--weights ema|raw] [--dtype float32|bfloat16] [--format sdjax|diffusers]

Layout (format `sdjax`, what `SubjectDiffusionPipeline.from_pretrained` and
`sdjax.weights.load_subject_diffusion` read): `sdjax_config.json`; `unet/`, `vae/`,
`text_encoder/`, `image_encoder/` in the diffusers/transformers safetensors layouts (the UNet with
its 5 input channels and the gated adapters under `fuser`, as diffusers' GLIGEN names them);
`tokenizer/`; `scheduler/scheduler_config.json`; `subject_modules.safetensors` (grounding net and
CLS projector). Format `diffusers` writes the UNet as diffusers' GLIGEN layout
(`attention_type: "gated"`, the adapters under `fuser`), without sdjax's config keys: it loads in
`UNet2DConditionModel.from_pretrained`, which builds a `position_net` of its own that this folder
has no weights for (sdjax's grounding net is another network, in `subject_modules.safetensors`):
replace it by a module returning the grounding tokens it is given, and pass them as
`cross_attention_kwargs={"gligen": {...}}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict
from safetensors.numpy import save_file

from sdjax import cli, sharding, trainer
from sdjax.models.image_encoder import CLIPVisionModelWithProjection
from sdjax.models.subject_diffusion import SubjectDiffusion
from sdjax.models.unet import UNetConfig
from sdjax.models.vae import DOWN_BLOCK, UP_BLOCK, VAEConfig
from sdjax.tokenizer import load_tokenizer
from sdjax.weights.clip import VISION_RENAMES
from sdjax.weights.core import export_state
from sdjax.weights.subject_diffusion import (
    CONFIG_FILE,
    SUBJECT_MODULES,
    SUBJECT_MODULES_FILE,
    tuples_from_json,
)
from sdjax.weights.unet import UNET_RENAMES
from sdjax.weights.vae import RENAMES as VAE_RENAMES

SDJAX_UNET_KEYS = ("grounding_dim", "use_adapter", "attention_map_factors")
NOT_SAVED = ("dtype", "remat", "attention_block", "attention")
IMAGE_ENCODER_WEIGHTS = "model.safetensors"


def unet_config_json(config: UNetConfig, with_sdjax_keys: bool) -> dict:
    """A diffusers `UNet2DConditionModel` config.json: with sdjax's adapter keys, or in diffusers'
    GLIGEN form (`attention_type` "gated" when the UNet has adapters)."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_SAVED}
    if with_sdjax_keys:
        return {"_class_name": "UNet2DConditionModel", **values}
    values = {k: v for k, v in values.items() if k not in SDJAX_UNET_KEYS}
    if config.use_adapter:
        if config.grounding_dim != config.cross_attention_dim:
            raise ValueError(
                f"format diffusers: the UNet's grounding_dim {config.grounding_dim} must equal its "
                f"cross_attention_dim {config.cross_attention_dim} (diffusers' GLIGEN adapters "
                "read tokens of the cross-attention width); export with format sdjax"
            )
        values["attention_type"] = "gated"
    return {"_class_name": "UNet2DConditionModel", **values}


def vae_config_json(config: VAEConfig) -> dict:
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_SAVED}
    n = len(config.block_out_channels)
    return {
        "_class_name": "AutoencoderKL",
        "down_block_types": [DOWN_BLOCK] * n,
        "up_block_types": [UP_BLOCK] * n,
        **values,
    }


def clip_config_json(config, architecture: str, model_type: str) -> dict:
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_SAVED}
    return {"architectures": [architecture], "model_type": model_type, **values}


def scheduler_config_json(config: ConfigDict) -> dict:
    """Stable Diffusion's scheduler settings for the training noise schedule of `config`."""
    return {
        "_class_name": "DDIMScheduler",
        **config.scheduler.to_dict(),
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
    }


def _save_tensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """A safetensors file readable as any file this process writes (safetensors creates it 0600)."""
    save_file(tensors, str(path))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _write(folder: Path, config: dict, tensors: dict[str, np.ndarray], weights_name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=list))
    _save_tensors(tensors, folder / weights_name)


def _cast(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(jnp.asarray(v).astype(dtype)) for k, v in tensors.items()}


def write_image_encoder(
    encoder: CLIPVisionModelWithProjection, folder: Path, dtype: str = "float32"
) -> list[Path]:
    """Writes `encoder` as a transformers `CLIPVisionModelWithProjection` folder; its two files."""
    _write(
        folder,
        clip_config_json(encoder.config, "CLIPVisionModelWithProjection", "clip_vision_model"),
        _cast(export_state(encoder, VISION_RENAMES), dtype),
        IMAGE_ENCODER_WEIGHTS,
    )
    return [folder / "config.json", folder / IMAGE_ENCODER_WEIGHTS]


def export_model(
    model: SubjectDiffusion,
    config: ConfigDict,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    fmt: str = "sdjax",
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Writes `model` (and the config it was trained with) as an inference folder."""
    if fmt not in ("sdjax", "diffusers"):
        raise ValueError(f"unknown export format {fmt!r}; choose sdjax or diffusers")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))

    _write(
        out / "unet",
        unet_config_json(model.unet.config, with_sdjax_keys=fmt == "sdjax"),
        _cast(export_state(model.unet, UNET_RENAMES), dtype),
        "diffusion_pytorch_model.safetensors",
    )
    _write(
        out / "vae",
        vae_config_json(model.vae.config),
        _cast(export_state(model.vae, VAE_RENAMES), dtype),
        "diffusion_pytorch_model.safetensors",
    )
    _write(
        out / "text_encoder",
        clip_config_json(model.text_encoder.config, "CLIPTextModel", "clip_text_model"),
        _cast(export_state(model.text_encoder), dtype),
        "model.safetensors",
    )
    write_image_encoder(model.image_encoder, out / "image_encoder", dtype)
    subject = {}
    for name in SUBJECT_MODULES:
        for key, value in export_state(getattr(model, name)).items():
            subject[f"{name}.{key}"] = value
    _save_tensors(_cast(subject, dtype), out / SUBJECT_MODULES_FILE)
    load_tokenizer(tokenizer_dir).save_pretrained(str(out / "tokenizer"))
    scheduler = out / "scheduler"
    scheduler.mkdir(exist_ok=True)
    (scheduler / "scheduler_config.json").write_text(
        json.dumps(scheduler_config_json(config), indent=2)
    )
    return out


def read_run_config(workdir: Path) -> ConfigDict:
    """The config a run was started with (its JSON lists read back as tuples)."""
    file = workdir / trainer.RUN_CONFIG
    if not file.exists():
        raise FileNotFoundError(f"{workdir} is not a training run: no {trainer.RUN_CONFIG}")
    return ConfigDict(tuples_from_json(json.loads(file.read_text())))


def export_run(
    workdir: Path,
    out: Path,
    *,
    weights: str | None = None,
    dtype: str | None = None,
    fmt: str = "sdjax",
    overwrite: bool = False,
) -> Path:
    """Exports the last checkpoint of the run in `workdir` (EMA weights when the run kept them).

    An existing, non-empty `out` is an error unless `overwrite`; then it is replaced whole.
    """
    config = read_run_config(workdir)
    weights = weights or config.export.weights
    if weights == "ema" and config.train.ema_decay <= 0:
        weights = "raw"
    checkpoints = trainer.checkpointer(config, workdir)
    step = checkpoints.latest_step()
    if step is None:
        checkpoints.close()
        raise FileNotFoundError(f"{workdir} has no checkpoint to export (none in checkpoints/)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            checkpoints.close()
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    # Frozen weights as loaded; the trained ones come from the checkpoint, never drawn.
    run = trainer.build_run(config, mesh, frozen_as_computed=False, restoring=True)
    state = checkpoints.restore_state(step, run.state)
    checkpoints.close()
    params = state.ema if weights == "ema" else state.params
    model = nnx.merge(run.graphdef, jax.device_get(params), jax.device_get(run.frozen))
    return export_model(model, config, out, dtype=dtype or config.export.dtype, fmt=fmt)


@cli.one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="training run directory (holds checkpoints/)")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--weights", choices=("ema", "raw"), default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--format", choices=("sdjax", "diffusers"), default="sdjax")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    out = export_run(
        Path(args.workdir),
        Path(args.out),
        weights=args.weights,
        dtype=args.dtype,
        fmt=args.format,
        overwrite=args.overwrite,
    )
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
