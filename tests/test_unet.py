"""Parity of sdjax's UNet and its blocks with diffusers (PyTorch, float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.downsampling import Downsample2D as TorchDownsample2D
from diffusers.models.resnet import ResnetBlock2D as TorchResnetBlock2D
from diffusers.models.upsampling import Upsample2D as TorchUpsample2D

from sdjax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from sdjax.weights.core import load_module

TOL = 1e-4  # max abs difference with PyTorch in float32, outputs O(1)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (GroupNorm affine included), O(1) outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.3 if name.endswith("bias") or p.ndim == 1 else 1.0 / np.sqrt(p[0].numel())
            p.copy_(
                torch.randn(p.shape, generator=gen) * scale
                + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            )


def from_torch(build, module: torch.nn.Module, **kw):
    tensors = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return load_module(build, tensors, **kw)


@pytest.mark.parametrize("cin,cout,temb", [(16, 32, 24), (16, 16, None)])
def test_resnet_block_matches_diffusers(cin, cout, temb):
    ref = TorchResnetBlock2D(
        in_channels=cin,
        out_channels=cout,
        temb_channels=temb,
        groups=8,
        eps=1e-6,
        output_scale_factor=2.0,
    )
    randomize(ref, 0)
    ours = from_torch(
        lambda rngs: ResnetBlock2D(
            cin, cout, temb_channels=temb, groups=8, output_scale_factor=2.0, rngs=rngs
        ),
        ref,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 6, cin), dtype=np.float32)
    t = rng.standard_normal((2, temb), dtype=np.float32) if temb else None
    want = nhwc(ref(nchw(x), None if t is None else torch.from_numpy(t)))
    got = np.asarray(ours(x, t))
    np.testing.assert_allclose(got, want, atol=TOL)


@pytest.mark.parametrize("padding", [0, 1])
def test_downsample_matches_diffusers(padding):
    ref = TorchDownsample2D(8, use_conv=True, out_channels=8, padding=padding)
    randomize(ref, 1)
    ours = from_torch(
        lambda rngs: Downsample2D(8, padding=padding, rngs=rngs), ref, ignore=[r"Conv2d_0"]
    )
    x = np.random.default_rng(1).standard_normal((1, 9, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(ours(x)), nhwc(ref(nchw(x))), atol=TOL)


@pytest.mark.parametrize("size", [None, (7, 9)])
def test_upsample_matches_diffusers(size):
    ref = TorchUpsample2D(8, use_conv=True)
    randomize(ref, 2)
    ours = from_torch(lambda rngs: Upsample2D(8, rngs=rngs), ref)
    x = np.random.default_rng(2).standard_normal((1, 4, 5, 8), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(ours(x, size)), nhwc(ref(nchw(x), size)), atol=TOL)
