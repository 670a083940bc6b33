"""Diffusers Stable Diffusion UNet checkpoints (safetensors) → sdjax `UNet`.

`conv_in` grows to `in_channels` (pretrained channels copied, new ones zero, bias kept), so the
loaded UNet with a zero mask channel equals the pretrained one. Adapter (`fuser`) parameters keep
their fresh initialisation (zero gates) unless the checkpoint holds them (GLIGEN layout), then all
of them must be there. GLIGEN's own grounding net (`position_net`) is not part of the UNet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from sdjax.models.attention import ATTENTION_RENAMES
from sdjax.models.unet import UNet, UNetConfig
from sdjax.weights.core import (
    WeightLoadError,
    load_module,
    read_config,
    read_safetensors_folder,
)

UNET_RENAMES = ATTENTION_RENAMES
ADAPTER_MARK = ".fuser."
IGNORED_KEYS = (r"^position_net\.",)
CONV_IN_KERNEL = "conv_in.weight"


def unet_folder(path: str | Path) -> Path:
    """The folder holding the UNet: `path/unet` for a pipeline root, else `path` itself."""
    path = Path(path)
    for folder in (path / "unet", path):
        if (folder / "config.json").exists():
            return folder
    raise FileNotFoundError(f"no UNet config.json in {path} or {path / 'unet'}")


def unet_config_from_folder(path: str | Path, **overrides: Any) -> UNetConfig:
    """The `UNetConfig` of a diffusers UNet folder (or pipeline root), with overrides."""
    return UNetConfig.from_diffusers(read_config(unet_folder(path)), **overrides)


def grow_input_channels(
    array: np.ndarray, shape: tuple[int, ...], initial: np.ndarray
) -> np.ndarray:
    """An HWIO conv kernel widened to `shape`: pretrained input channels first, new ones zero."""
    del initial
    if array.shape[2] > shape[2] or array.shape[:2] + array.shape[3:] != shape[:2] + shape[3:]:
        raise WeightLoadError(
            f"wrong shape for {CONV_IN_KERNEL}: checkpoint HWIO {array.shape} cannot grow to {shape}"
        )
    grown = np.zeros(shape, array.dtype)
    grown[:, :, : array.shape[2]] = array
    return grown


def load_unet(
    path: str | Path,
    *,
    in_channels: int = 5,
    dtype: Any = jnp.float32,
    grounding_dim: int = 1024,
    use_adapter: bool = True,
    remat: bool = False,
    **overrides: Any,
) -> UNet:
    """A diffusers UNet (pipeline root or `unet/` folder) as an sdjax `UNet`.

    `overrides` set any other `UNetConfig` field (e.g. `attention_map_factors`).
    """
    folder = unet_folder(path)
    config = unet_config_from_folder(
        folder,
        in_channels=in_channels,
        dtype=dtype,
        grounding_dim=grounding_dim,
        use_adapter=use_adapter,
        remat=remat,
        **overrides,
    )
    tensors = read_safetensors_folder(folder)
    has_adapter = any(ADAPTER_MARK in key for key in tensors)
    resize = {}
    if CONV_IN_KERNEL in tensors and tensors[CONV_IN_KERNEL].shape[1] != in_channels:
        resize[CONV_IN_KERNEL] = grow_input_channels
    return load_module(
        lambda rngs: UNet(config, rngs=rngs),
        tensors,
        renames=UNET_RENAMES,
        fresh=lambda key: not has_adapter and ADAPTER_MARK in key,
        resize=resize,
        ignore=IGNORED_KEYS,
    )
