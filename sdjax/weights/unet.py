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
from sdjax.models.init import Shardings
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


# sdjax settings of a UNet folder that lacks them (a plain diffusers release).
SDJAX_DEFAULTS = {"in_channels": 5, "grounding_dim": 1024, "use_adapter": True}


def _adds_location_channel(
    stored: dict[str, Any], tensors: dict[str, np.ndarray], in_channels: int
) -> bool:
    """Whether `conv_in` is to grow by the location-mask channel: the one resize loading makes,
    for a plain diffusers release whose kernel has its config's `in_channels` (4) and a model of
    one more. Any other channel count is a shape mismatch, as for every other tensor."""
    if "grounding_dim" in stored or CONV_IN_KERNEL not in tensors:
        return False
    channels = tensors[CONV_IN_KERNEL].shape[1]
    return channels == stored.get("in_channels") and in_channels == channels + 1


def load_unet(
    path: str | Path,
    *,
    in_channels: int | None = None,
    dtype: Any = jnp.float32,
    grounding_dim: int | None = None,
    use_adapter: bool | None = None,
    attention_map_factors: tuple[int, ...] | None = None,
    remat: bool = False,
    shardings: Shardings | None = None,
    **overrides: Any,
) -> UNet:
    """A diffusers UNet (pipeline root or `unet/` folder) as an sdjax `UNet`.

    `in_channels`, `grounding_dim`, `use_adapter`: when None, the values an sdjax export stored in
    its config.json, or `SDJAX_DEFAULTS` for a plain diffusers release (`in_channels` 5: the
    pretrained 4 plus the location mask). `attention_map_factors`: the maps the attention loss
    reads (an error if the layout lacks one); None: those an sdjax export stored, else the layout's
    own (`UNetConfig`). `shardings`: where each parameter goes (`load_module`). `overrides` set
    any other `UNetConfig` field.
    Loading is strict; its one resize is `conv_in` of a plain diffusers release growing by the
    location-mask channel (zero-initialised), which the load report names.
    """
    folder = unet_folder(path)
    stored = read_config(folder)
    # An sdjax export stores its settings; a plain diffusers release gets sdjax's defaults.
    base = stored if "grounding_dim" in stored else SDJAX_DEFAULTS
    given = {"in_channels": in_channels, "grounding_dim": grounding_dim, "use_adapter": use_adapter}
    settings = {k: base[k] if v is None else v for k, v in given.items()}
    in_channels = settings["in_channels"]
    if attention_map_factors is not None:
        settings["attention_map_factors"] = attention_map_factors
    config = UNetConfig.from_diffusers(stored, dtype=dtype, remat=remat, **settings, **overrides)
    tensors = read_safetensors_folder(folder)
    has_adapter = any(ADAPTER_MARK in key for key in tensors)
    resize = {}
    if _adds_location_channel(stored, tensors, in_channels):
        resize[CONV_IN_KERNEL] = grow_input_channels
    return load_module(
        lambda rngs: UNet(config, rngs=rngs),
        tensors,
        renames=UNET_RENAMES,
        fresh=lambda key: not has_adapter and ADAPTER_MARK in key,
        resize=resize,
        ignore=IGNORED_KEYS,
        shardings=shardings,
    )
