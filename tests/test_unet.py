"""Parity of sdjax's UNet and its blocks with diffusers (PyTorch), on tiny random checkpoints.

Tolerances: float32 outputs within 1e-4 (max abs) of PyTorch, outputs O(1); attention maps within
1e-5; bfloat16 compute within 2e-2 relative (L2) error of float32; remat gradients within 1e-5.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.downsampling import Downsample2D as TorchDownsample2D
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D as TorchResnetBlock2D
from diffusers.models.upsampling import Upsample2D as TorchUpsample2D
from flax import nnx
from safetensors.numpy import load_file, save_file

from sdjax.models.embeddings import timestep_embedding
from sdjax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from sdjax.models.unet import UNet, UNetConfig
from sdjax.weights.core import (
    WeightLoadError,
    export_state,
    load_module,
    to_torch_layout,
    torch_key,
)
from sdjax.weights.unet import (
    UNET_RENAMES,
    grow_input_channels,
    load_unet,
    unet_config_from_folder,
)

TOL = 1e-4  # max abs difference with PyTorch in float32
MAP_TOL = 1e-5
BF16_REL_TOL = 2e-2
REMAT_TOL = 1e-5
CONTEXT_LEN, GROUNDING_LEN = 7, 5
POSITIONS = np.array([[1, 3, 6], [0, 2, 5]], np.int32)

SD1 = dict(  # conv projections, one head count for all blocks, odd latent height
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,
    cross_attention_dim=24,
    norm_num_groups=8,
    sample_size=(9, 12),
)
SD2 = dict(  # linear projections, per-block heads, deeper transformers in the middle block
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4, 4),
    transformer_layers_per_block=(1, 2, 1),
    cross_attention_dim=32,
    use_linear_projection=True,
    upcast_attention=True,
    norm_num_groups=16,
    sample_size=16,
)
SD2_FACTORS = (2, 4)  # down_blocks[1], mid_block, up_blocks[1] of the SD2-style layout


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (norm affines and adapter gates included), O(1) activations."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim <= 1:
                noise = torch.randn(p.shape, generator=gen) * 0.3
                p.copy_(noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))


def from_torch(build, module: torch.nn.Module, **kw):
    tensors = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return load_module(build, tensors, **kw)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


# ---------------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("cin,cout,temb", [(16, 32, 24), (16, 16, None)])
def test_resnet_block_matches_diffusers(cin, cout, temb):
    ref = TorchResnetBlock2D(
        in_channels=cin, out_channels=cout, temb_channels=temb, groups=8, output_scale_factor=2.0
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
    assert max_diff(ours(x, t), want) <= TOL


@pytest.mark.parametrize("padding", [0, 1])
def test_downsample_matches_diffusers(padding):
    ref = TorchDownsample2D(8, use_conv=True, out_channels=8, padding=padding, name="op")
    randomize(ref, 1)
    ours = from_torch(lambda rngs: Downsample2D(8, padding=padding, rngs=rngs), ref)
    x = np.random.default_rng(1).standard_normal((1, 9, 8, 8), dtype=np.float32)
    assert max_diff(ours(x), nhwc(ref(nchw(x)))) <= TOL


@pytest.mark.parametrize("size", [None, (7, 9)])
def test_upsample_matches_diffusers(size):
    ref = TorchUpsample2D(8, use_conv=True)
    randomize(ref, 2)
    ours = from_torch(lambda rngs: Upsample2D(8, rngs=rngs), ref)
    x = np.random.default_rng(2).standard_normal((1, 4, 5, 8), dtype=np.float32)
    assert max_diff(ours(x, size), nhwc(ref(nchw(x), size))) <= TOL


@pytest.mark.parametrize("dim,flip,shift", [(32, True, 0), (33, False, 1)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    t = np.array([0, 1, 250, 999], np.int64)
    want = get_timestep_embedding(torch.from_numpy(t), dim, flip, shift).numpy()
    got = timestep_embedding(t, dim, flip_sin_to_cos=flip, freq_shift=shift)
    assert max_diff(got, want) <= TOL  # float32 sin/cos of angles up to 1e3 rad (ulp 6e-5)


# ----------------------------------------------------------------------- whole UNet parity


def reference_unet(config: dict, seed: int, **kw) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    ref = UNet2DConditionModel(**config, **kw).eval()
    randomize(ref, seed)
    return ref


def make_inputs(config: dict, seed: int, batch: int = 2):
    size = config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    dim = config["cross_attention_dim"]
    return dict(
        x=rng.standard_normal((batch, height, width, 4), dtype=np.float32),
        t=np.array([7, 801][:batch], np.int64),
        context=rng.standard_normal((batch, CONTEXT_LEN, dim), dtype=np.float32),
        grounding=rng.standard_normal((batch, GROUNDING_LEN, dim), dtype=np.float32),
    )


def with_mask(x: np.ndarray, value: float = 0.0) -> np.ndarray:
    return np.concatenate([x, np.full_like(x[..., :1], value)], axis=-1)


def torch_forward(ref: UNet2DConditionModel, inp: dict, **kw) -> np.ndarray:
    with torch.no_grad():
        out = ref(
            nchw(inp["x"]), torch.from_numpy(inp["t"]), torch.from_numpy(inp["context"]), **kw
        )
    return nhwc(out.sample)


@nnx.jit
def run(model: UNet, x, t, context, grounding=None, adapter_scale=1.0, positions=None):
    return model(
        x, t, context, grounding, adapter_scale=adapter_scale, attention_positions=positions
    )


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """A plain SD 1.x-style checkpoint: 5 input channels and fresh (zero-gated) adapters."""
    ref = reference_unet(SD1, 0)
    path = tmp_path_factory.mktemp("sd1")
    ref.save_pretrained(path / "unet", safe_serialization=True)  # a pipeline root
    model = load_unet(path, grounding_dim=16, attention_map_factors=(1, 2))
    return ref, path / "unet", model


class Passthrough(torch.nn.Module):
    """Stands in for GLIGEN's position net: the grounding tokens are given directly."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    """An SD 2.x-style checkpoint in GLIGEN layout (adapters with open gates, position_net)."""
    ref = reference_unet(SD2, 1, attention_type="gated")
    path = tmp_path_factory.mktemp("sd2")
    ref.save_pretrained(path, safe_serialization=True)  # position_net weights are saved too
    ref.position_net = Passthrough()
    model = load_unet(
        path, grounding_dim=SD2["cross_attention_dim"], attention_map_factors=SD2_FACTORS
    )
    return ref, path, model


def gligen_kwargs(inp: dict) -> dict:
    return {"cross_attention_kwargs": {"gligen": {"tokens": torch.from_numpy(inp["grounding"])}}}


def test_sd1_layout_with_fresh_adapters_matches_diffusers(sd1):
    """Mask channel 0 and fresh (zero-gated) adapters fed grounding tokens: the pretrained UNet."""
    ref, _, model = sd1
    inp = make_inputs(SD1, 0)
    want = torch_forward(ref, inp)
    got = run(model, with_mask(inp["x"]), inp["t"], inp["context"], inp["grounding"][..., :16])
    assert 0.1 < np.abs(want).mean() < 10
    assert got.shape == want.shape and got.dtype == jnp.float32
    assert max_diff(got, want) <= TOL


def test_export_round_trips_to_diffusers_keys(sd1):
    _, path, model = sd1
    tensors = load_file(str(path / "diffusion_pytorch_model.safetensors"))
    exported = export_state(model, UNET_RENAMES)
    assert {k for k in exported if ".fuser." not in k} == set(tensors)
    for key, value in tensors.items():
        if key != "conv_in.weight":
            np.testing.assert_array_equal(exported[key], value, err_msg=key)
    np.testing.assert_array_equal(exported["conv_in.weight"][:, :4], tensors["conv_in.weight"])


def test_conv_in_grows_with_zero_mask_channel(sd1):
    ref, _, model = sd1
    kernel = np.asarray(model.conv_in.kernel[...])  # HWIO
    want = ref.conv_in.weight.detach().numpy().transpose(2, 3, 1, 0)
    assert kernel.shape == (3, 3, 5, 32)
    np.testing.assert_array_equal(kernel[:, :, :4], want)
    np.testing.assert_array_equal(kernel[:, :, 4], 0.0)
    np.testing.assert_array_equal(model.conv_in.bias[...], ref.conv_in.bias.detach().numpy())
    with pytest.raises(WeightLoadError, match=r"conv_in.weight.*cannot grow"):
        grow_input_channels(want, (3, 3, 3, 32), want)


def test_sd2_layout_and_gligen_adapter_match_diffusers(sd2):
    """Linear projections, per-block heads; GLIGEN weights load into the adapter."""
    ref, _, model = sd2
    inp = make_inputs(SD2, 2)
    args = (with_mask(inp["x"]), inp["t"], inp["context"])
    want_plain = torch_forward(ref, inp)
    want = torch_forward(ref, inp, **gligen_kwargs(inp))
    plain = run(model, *args)
    got = run(model, *args, inp["grounding"])
    assert 0.1 < np.abs(want).mean() < 10
    assert max_diff(want, want_plain) > 10 * TOL  # the gates are open
    assert max_diff(plain, want_plain) <= TOL
    assert max_diff(got, want) <= TOL
    # β = 0 closes the gates: bit for bit the plain UNet (x + 0·h)
    np.testing.assert_array_equal(np.asarray(run(model, *args, inp["grounding"], 0.0)), plain)


def test_adapter_scale_scales_both_gates(sd2):
    """adapter_scale β equals diffusers with each gate tanh(α) replaced by β·tanh(α)."""
    ref, _, model = sd2
    inp = make_inputs(SD2, 3)
    beta = 0.5
    originals = {}
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                originals[name] = p.clone()
                p.copy_(torch.atanh(beta * torch.tanh(p)))
    try:
        want = torch_forward(ref, inp, **gligen_kwargs(inp))
    finally:
        with torch.no_grad():
            for name, p in ref.named_parameters():
                if name in originals:
                    p.copy_(originals[name])
    got = run(model, with_mask(inp["x"]), inp["t"], inp["context"], inp["grounding"], beta)
    assert max_diff(got, want) <= TOL


def test_any_layout_loads_with_the_maps_it_has(tmp_path):
    """A plain diffusers UNet without cross-attention at factor 8 (SD2-style, 3 blocks) loads with
    the maps it has; only a config asking for a map it lacks is refused, naming the factor."""
    ref = reference_unet(SD2, 5)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    model = load_unet(tmp_path)
    assert model.config.attention_map_factors == SD2_FACTORS
    inp = make_inputs(SD2, 5)
    grounding = np.zeros((2, GROUNDING_LEN, model.config.grounding_dim), np.float32)
    got, maps = run(
        model, with_mask(inp["x"]), inp["t"], inp["context"], grounding, positions=POSITIONS
    )
    assert max_diff(got, torch_forward(ref, inp)) <= TOL  # fresh adapters: the plain UNet
    latent = SD2["sample_size"]
    assert sorted({m.shape[1] for m in maps}) == sorted(latent // f for f in SD2_FACTORS)
    with pytest.raises(ValueError, match=r"factor 8, which this layout lacks.*\[1, 2, 4\]"):
        load_unet(tmp_path, attention_map_factors=(2, 4, 8))


class CaptureProbs:
    """A diffusers attention processor that computes attention explicitly and records the
    head-averaged probabilities at `positions` for feature maps at the wanted factors."""

    def __init__(self, records: list, positions: torch.Tensor, latent_pixels: int, factors):
        self.records, self.positions = records, positions
        self.latent_pixels, self.factors = latent_pixels, factors

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kwargs):
        b, n, _ = hidden_states.shape
        q, k, v = (
            f(x).view(b, -1, attn.heads, attn.inner_dim // attn.heads).transpose(1, 2)
            for f, x in (
                (attn.to_q, hidden_states),
                (attn.to_k, encoder_hidden_states),
                (attn.to_v, encoder_hidden_states),
            )
        )
        probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
        if round(math.sqrt(self.latent_pixels / n)) in self.factors:
            index = self.positions[:, None, None, :].expand(-1, probs.shape[1], n, -1)
            self.records.append(probs.gather(-1, index).mean(1))
        out = (probs @ v).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[0](out)


def test_cross_attention_maps_match_pytorch_probabilities(sd2):
    ref, _, model = sd2
    inp = make_inputs(SD2, 4)
    records: list[torch.Tensor] = []
    height = width = SD2["sample_size"]
    capture = CaptureProbs(records, torch.from_numpy(POSITIONS).long(), height * width, SD2_FACTORS)
    processors = {}
    for name, module in ref.named_modules():
        if name.endswith("attn2"):
            processors[name] = module.processor
            module.set_processor(capture)
    try:
        want = torch_forward(ref, inp, **gligen_kwargs(inp))
    finally:
        for name, module in ref.named_modules():
            if name in processors:
                module.set_processor(processors[name])

    args = (with_mask(inp["x"]), inp["t"], inp["context"], inp["grounding"])
    noise, maps = run(model, *args, positions=POSITIONS)
    fused = run(model, *args)
    # down_blocks[1] (2 transformer layers), mid_block (1), up_blocks[1] (2 attentions x 2)
    assert [m.shape for m in maps] == [(2, 8, 8, 3)] * 2 + [(2, 4, 4, 3)] + [(2, 8, 8, 3)] * 4
    assert len(records) == len(maps)
    for ours, theirs in zip(maps, records, strict=True):
        assert ours.dtype == jnp.float32
        assert max_diff(ours, theirs.numpy().reshape(ours.shape)) <= MAP_TOL
        assert float(ours.min()) >= 0.0 and float(ours.sum(-1).max()) <= 1.0 + 1e-6
    assert max_diff(noise, want) <= TOL
    assert max_diff(noise, fused) <= 1e-5


def with_config(model: UNet, **changes) -> UNet:
    """The same parameters in a UNet built with a changed config (e.g. dtype, remat)."""
    other = nnx.eval_shape(
        lambda: UNet(dataclasses.replace(model.config, **changes), rngs=nnx.Rngs(0))
    )
    nnx.update(other, nnx.state(model, nnx.Param))
    return other


def test_bfloat16_compute_close_to_float32(sd2):
    _, _, model = sd2
    model16 = with_config(model, dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(model16, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    inp = make_inputs(SD2, 5)
    args = (with_mask(inp["x"]), inp["t"], inp["context"], inp["grounding"])
    want = np.asarray(run(model, *args))
    got = run(model16, *args)
    assert got.dtype == jnp.float32
    rel = np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want)
    assert rel <= BF16_REL_TOL, rel


def test_remat_gives_same_gradients():
    """One-level UNet (resnets, transformer, adapter with open gates), random weights."""
    config = UNetConfig(
        block_out_channels=(32,),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        attention_head_dim=2,
        cross_attention_dim=16,
        grounding_dim=16,
        norm_num_groups=8,
        attention_map_factors=(1,),
    )
    model = nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(6)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):  # random, gates open
        shape = var.get_value().shape
        scale = 0.3 if len(shape) <= 1 else 1 / math.sqrt(np.prod(shape[:-1]))
        var.set_value(jnp.asarray(rng.standard_normal(shape, np.float32) * scale))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    remat_graphdef, _, _ = nnx.split(with_config(model, remat=True), nnx.Param, ...)
    x = rng.standard_normal((1, 8, 8, 5), np.float32)
    context = rng.standard_normal((1, CONTEXT_LEN, 16), np.float32)
    grounding = rng.standard_normal((1, GROUNDING_LEN, 16), np.float32)

    def loss(p, gdef):
        return jnp.mean(nnx.merge(gdef, p, rest)(x, 500, context, grounding) ** 2)

    assert "remat" in str(jax.make_jaxpr(loss, static_argnums=1)(params, remat_graphdef))
    assert "remat" not in str(jax.make_jaxpr(loss, static_argnums=1)(params, graphdef))
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    want = jax.tree.leaves(grad(params, graphdef))
    got = jax.tree.leaves(grad(params, remat_graphdef))
    assert len(got) == len(want)
    assert all(float(jnp.abs(w).max()) > 0 for w in want)  # every parameter is reached
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=REMAT_TOL, atol=REMAT_TOL)


# ------------------------------------------------------------------- full-size layouts


SD2_BASE = dict(
    attention_head_dim=[5, 10, 20, 20],
    block_out_channels=[320, 640, 1280, 1280],
    cross_attention_dim=1024,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    layers_per_block=2,
    sample_size=64,
    use_linear_projection=True,
    upcast_attention=False,
)


def test_sd2_base_builds_abstractly_with_diffusers_keys():
    """Every parameter of the SD 2 base UNet (GLIGEN layout) has diffusers' name and shape."""
    layout = SD2_BASE
    with torch.device("meta"):
        ref = UNet2DConditionModel(**layout, attention_type="gated")
    want = {
        k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith("position_net")
    }
    config = UNetConfig.from_diffusers(
        {**layout, "in_channels": 4}, grounding_dim=layout["cross_attention_dim"]
    )
    model = nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))
    got = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = tuple(var.get_value().shape)
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == len(shape), (path, axes)
        layout_view = np.broadcast_to(np.empty((), np.bool_), shape)  # shape only, no memory
        got[torch_key(path, UNET_RENAMES)] = to_torch_layout(str(path[-1]), layout_view).shape
    assert got == want


# ----------------------------------------------------------------------- config and errors


def test_config_from_folder_and_unsupported_options(sd1):
    _, path, _ = sd1
    config = unet_config_from_folder(path, attention_map_factors=(1,))
    assert config.in_channels == 4 and config.attention_head_dim == 8
    assert config.block_out_channels == (32, 64) and not config.use_linear_projection
    assert hash(UNetConfig(block_out_channels=[320, 640, 1280, 1280])) is not None
    inert = {"mid_block_only_cross_attention": False, "addition_embed_type_num_heads": 8}
    assert UNetConfig.from_diffusers({**SD2_BASE, **inert}).attention_head_dim == (5, 10, 20, 20)
    with pytest.raises(ValueError, match=r"class_embed_type='timestep'"):
        UNetConfig.from_diffusers({**SD2_BASE, "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match=r"frobnicate \(unknown option\)"):
        UNetConfig.from_diffusers({**SD2_BASE, "frobnicate": 1})
    with pytest.raises(ValueError, match=r"factor 16, which this layout lacks"):
        UNetConfig.from_diffusers(SD2_BASE, attention_map_factors=(16,))


def _write(folder, tensors: dict, config_from) -> None:
    folder.mkdir()
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text((config_from / "config.json").read_text())


def test_bad_checkpoints_give_clear_errors(sd1, tmp_path):
    ref, path, _ = sd1
    tensors = load_file(str(path / "diffusion_pytorch_model.safetensors"))
    plain = dict(in_channels=4, use_adapter=False, attention_map_factors=(1,))

    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    _write(tmp_path / "shape", {**tensors, key: tensors[key][:, :-1].copy()}, path)
    with pytest.raises(
        WeightLoadError, match=rf"{key}: checkpoint \(32, 23\), model expects \(32, 24\)"
    ):
        load_unet(tmp_path / "shape", **plain)

    key = "mid_block.resnets.1.conv2.bias"
    _write(tmp_path / "missing", {k: v for k, v in tensors.items() if k != key}, path)
    with pytest.raises(WeightLoadError, match=rf"missing {key}: expected shape \(64,\)"):
        load_unet(tmp_path / "missing", **plain)

    ref.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(WeightLoadError, match=r"diffusion_pytorch_model\.bin"):
        load_unet(tmp_path / "pickled", **plain)


def test_conv_in_of_another_channel_count_is_refused(sd1, tmp_path):
    """Only a plain release's 4 channels grow (to 5); an edited 3-channel kernel is an error, in a
    diffusers folder and in an sdjax export alike."""
    _, path, _ = sd1
    tensors = load_file(str(path / "diffusion_pytorch_model.safetensors"))
    edited = {**tensors, "conv_in.weight": tensors["conv_in.weight"][:, :3].copy()}
    _write(tmp_path / "plain", edited, path)
    export = tmp_path / "export"
    _write(export, edited, path)
    config = json.loads((export / "config.json").read_text())
    (export / "config.json").write_text(
        json.dumps({**config, "in_channels": 5, "grounding_dim": 16, "use_adapter": True})
    )
    shapes = r"conv_in.weight: checkpoint \(32, 3, 3, 3\), model expects \(32, 5, 3, 3\)"
    for folder in (tmp_path / "plain", export):
        with pytest.raises(WeightLoadError, match=shapes):
            load_unet(folder, grounding_dim=16, attention_map_factors=(1, 2))
