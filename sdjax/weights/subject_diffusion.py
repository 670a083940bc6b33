"""The whole Subject-Diffusion model from folders: a Stable Diffusion release plus a CLIP vision
tower (training start), or an sdjax export (sampling, fine-tuning on)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from sdjax.models.grounding import GroundingNet
from sdjax.models.init import Shardings
from sdjax.models.subject_diffusion import Conditioning, SubjectDiffusion, part_configs
from sdjax.models.text_encoder import CLSProjector
from sdjax.weights.clip import load_image_encoder, load_text_encoder
from sdjax.weights.core import load_module
from sdjax.weights.mapped import map_safetensors
from sdjax.weights.unet import load_unet
from sdjax.weights.vae import load_vae

CONFIG_FILE = "sdjax_config.json"
SUBJECT_MODULES_FILE = "subject_modules.safetensors"
SUBJECT_MODULES = ("grounding", "cls_projector")


def read_export_config(path: str | Path) -> ConfigDict:
    """The sdjax config stored in an export folder (JSON lists read back as tuples)."""
    file = Path(path) / CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"{path} is not an sdjax export: no {CONFIG_FILE}")
    return ConfigDict(tuples_from_json(json.loads(file.read_text())))


def tuples_from_json(value):
    """JSON data with every list turned into a tuple (configs hold tuples)."""
    if isinstance(value, dict):
        return {k: tuples_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(tuples_from_json(v) for v in value)
    return value


def load_parts(
    model_config: ConfigDict,
    *,
    base: str | Path,
    image_encoder: str | Path,
    subject_modules: str | Path | None = None,
    shardings: Shardings | None = None,
) -> SubjectDiffusion:
    """UNet, VAE and text encoder from the diffusers folder `base`, the vision tower from
    `image_encoder`; grounding net and CLS projector from `subject_modules` (safetensors) or, when
    None, freshly initialised (the start of training). `shardings`: where each parameter of each
    part goes (`sdjax.weights.core.load_module`); default: the default device."""
    parts = part_configs(model_config)
    unet_cfg, text_cfg = parts["unet"], parts["text_encoder"]
    unet = load_unet(
        base,
        in_channels=unet_cfg.in_channels,
        dtype=unet_cfg.dtype,
        grounding_dim=unet_cfg.grounding_dim,
        use_adapter=unet_cfg.use_adapter,
        remat=unet_cfg.remat,
        shardings=shardings,
        attention_block=unet_cfg.attention_block,
        attention=unet_cfg.attention,
        # Unset in the config: the maps the loaded layout has.
        attention_map_factors=model_config.unet.get("attention_map_factors"),
    )
    text_encoder = load_text_encoder(
        base, dtype=text_cfg.dtype, remat=text_cfg.remat, shardings=shardings
    )
    vision = load_image_encoder(
        image_encoder, dtype=parts["image_encoder"].dtype, shardings=shardings
    )
    vae = load_vae(base, shardings=shardings)
    grounding_cfg = dataclasses.replace(
        parts["grounding"],
        patch_dim=vision.config.hidden_size,
        num_patch_tokens=vision.config.num_patches,
        out_dim=unet.config.grounding_dim,
    )

    def build_grounding(rngs):
        return GroundingNet(grounding_cfg, rngs=rngs)

    def build_projector(rngs):
        return CLSProjector(
            vision.config.projection_dim,
            text_encoder.config.hidden_size,
            rngs=rngs,
            dtype=text_encoder.config.dtype,
        )

    tensors = map_safetensors(subject_modules) if subject_modules else {}
    fresh = (lambda key: False) if subject_modules else (lambda key: True)
    grounding = load_module(
        build_grounding, _strip(tensors, "grounding."), fresh=fresh, shardings=shardings
    )
    projector = load_module(
        build_projector, _strip(tensors, "cls_projector."), fresh=fresh, shardings=shardings
    )
    conditioning = Conditioning.from_config(model_config)
    return SubjectDiffusion(unet, vae, text_encoder, vision, grounding, projector, conditioning)


def _strip(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_subject_diffusion(path: str | Path) -> tuple[SubjectDiffusion, ConfigDict]:
    """An sdjax export folder (see `sdjax.export`) as (model, config)."""
    path = Path(path)
    config = read_export_config(path)
    model = load_parts(
        config.model,
        base=path,
        image_encoder=path / "image_encoder",
        subject_modules=path / SUBJECT_MODULES_FILE,
    )
    return model, config


def cast_params(module: nnx.Module, dtype: str) -> None:
    """Casts every parameter of `module` in place (exports in bfloat16 halve the folder)."""
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        var.set_value(var.get_value().astype(jnp.dtype(dtype)))
