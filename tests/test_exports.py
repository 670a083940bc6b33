"""Exports load elsewhere and back: the diffusers-format UNet (with its gated adapters) in
diffusers, the VAE in diffusers, the text and image encoders in transformers, each giving
sdjax's outputs; every part round-trips export → import; bfloat16 and EMA exports of a real run,
the EMA itself re-derived in NumPy."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from flax import nnx
from transformers import CLIPTextModel, CLIPVisionModelWithProjection

from data.build_sample import build_sample_records
from sdjax import export, sharding, trainer
from sdjax.export import export_model
from sdjax.weights.mapped import map_safetensors
from sdjax.weights.subject_diffusion import load_subject_diffusion
from tests.training_config import micro_config

TOL = 1e-4  # max abs difference with PyTorch in float32, outputs O(1)
OPEN_GATE = 0.5
EMA_DECAY = 0.5
EMA_TOL = 1e-6  # float32 EMA against the float64 re-derivation
CONTEXT_LEN = 7


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().numpy().transpose(0, 2, 3, 1)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def params_of(module: nnx.Module) -> dict[str, np.ndarray]:
    return {
        "/".join(str(p) for p in path): np.asarray(jax.device_get(var.get_value()))
        for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))
    }


def perturb(module: nnx.Module, seed: int) -> None:
    """Every parameter moved off its initial value (zero-initialised gates, null features and
    the mask channel too), so a part an import leaves at its initialisation shows; gates open."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        value = np.asarray(var.get_value())
        if str(path[-1]) in ("alpha_attn", "alpha_dense"):
            var.set_value(np.full_like(value, OPEN_GATE))
            continue
        scale = 0.1 / math.sqrt(value[..., 0].size) if value.ndim > 1 else 0.05
        var.set_value((value + scale * rng.standard_normal(value.shape)).astype(value.dtype))


class Passthrough(torch.nn.Module):
    """Stands in for diffusers' GLIGEN position net: the grounding tokens are given directly."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return micro_config(",".join(build_sample_records(tmp_path_factory.mktemp("sample"))))


@pytest.fixture(scope="module")
def model(config):
    model = trainer.init_model(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
    perturb(model, 0)
    return model


@pytest.fixture(scope="module", params=["sdjax", "diffusers"])
def exported(request, config, model, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    return request.param, export_model(model, config, out, fmt=request.param)


@pytest.fixture(scope="module")
def diffusers_export(config, model, tmp_path_factory):
    return export_model(model, config, tmp_path_factory.mktemp("diffusers"), fmt="diffusers")


def test_every_part_round_trips(exported, model):
    """Export then `load_subject_diffusion`: every parameter of every part, bit for bit."""
    _, out = exported
    loaded, _ = load_subject_diffusion(out)
    want, got = params_of(model), params_of(loaded)
    assert got.keys() == want.keys()
    different = [k for k in want if not np.array_equal(got[k], want[k])]
    assert different == []


def test_diffusers_unet_with_adapters_matches_sdjax(config, model, diffusers_export):
    unet_config = json.loads((diffusers_export / "unet" / "config.json").read_text())
    assert unet_config["attention_type"] == "gated" and "grounding_dim" not in unet_config
    ref, info = UNet2DConditionModel.from_pretrained(
        diffusers_export / "unet", output_loading_info=True
    )
    assert info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert info["missing_keys"] and all(k.startswith("position_net.") for k in info["missing_keys"])
    ref.position_net = Passthrough()
    ref.eval()

    cfg = model.unet.config
    rng = np.random.default_rng(1)
    size = cfg.sample_size
    x = rng.standard_normal((2, size, size, cfg.in_channels), dtype=np.float32)
    x[..., -1] = rng.random((2, size, size)) > 0.5  # the location mask
    t = np.array([3, 620], np.int64)
    context = rng.standard_normal((2, CONTEXT_LEN, cfg.cross_attention_dim), dtype=np.float32)
    slots = config.model.grounding.max_subjects * model.grounding.config.num_patch_tokens
    tokens = rng.standard_normal((2, slots, cfg.grounding_dim), dtype=np.float32)

    forward = nnx.jit(lambda unet, *a: unet(*a))
    got = forward(model.unet, x, t, context, tokens)
    without = forward(model.unet, x, t, context)
    with torch.no_grad():
        want = nhwc(
            ref(
                nchw(x),
                torch.from_numpy(t),
                torch.from_numpy(context),
                cross_attention_kwargs={"gligen": {"tokens": torch.from_numpy(tokens)}},
            ).sample
        )
    assert 0.1 < np.abs(want).mean() < 10
    assert max_diff(got, without) > 100 * TOL  # the adapters take part
    assert max_diff(got, want) <= TOL


def test_vae_and_encoders_load_in_diffusers_and_transformers(model, diffusers_export):
    rng = np.random.default_rng(2)
    vae = AutoencoderKL.from_pretrained(diffusers_export / "vae").eval()
    size = model.unet.config.sample_size * 2 ** (len(model.vae.config.block_out_channels) - 1)
    images = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    latents = rng.standard_normal(
        (2, model.unet.config.sample_size, model.unet.config.sample_size, 4), dtype=np.float32
    )
    with torch.no_grad():
        want_mean = nhwc(vae.encode(nchw(images)).latent_dist.mean)
        want_decoded = nhwc(vae.decode(nchw(latents)).sample)
    assert max_diff(nnx.jit(lambda v, x: v.encode(x).mean)(model.vae, images), want_mean) <= TOL
    assert max_diff(nnx.jit(lambda v, z: v.decode(z))(model.vae, latents), want_decoded) <= TOL

    text = CLIPTextModel.from_pretrained(diffusers_export / "text_encoder").eval()
    ids = rng.integers(0, 1000, (2, 16))
    with torch.no_grad():
        want = text(torch.from_numpy(ids)).last_hidden_state.numpy()
    assert max_diff(nnx.jit(lambda m, i: m(i))(model.text_encoder, ids), want) <= TOL

    vision = CLIPVisionModelWithProjection.from_pretrained(diffusers_export / "image_encoder")
    side = model.image_encoder.config.image_size
    pixels = rng.standard_normal((2, side, side, 3), dtype=np.float32)
    with torch.no_grad():
        out = vision.eval()(pixel_values=nchw(pixels))
    cls, patches = nnx.jit(lambda m, p: m(p))(model.image_encoder, pixels)
    assert max_diff(cls, out.image_embeds.numpy()) <= TOL
    assert max_diff(patches, out.last_hidden_state[:, 1:].numpy()) <= TOL


def test_diffusers_format_refuses_a_grounding_width_diffusers_cannot_hold(model):
    narrow = dataclasses.replace(model.unet.config, grounding_dim=16)
    with pytest.raises(ValueError, match="grounding_dim 16 must equal its cross_attention_dim 32"):
        export.unet_config_json(narrow, with_sdjax_keys=False)


# ----------------------------------------------------------------------- a real run's exports


@pytest.fixture(scope="module")
def run(config, tmp_path_factory):
    """Two training steps with an EMA, a checkpoint after each."""
    c = config.copy_and_resolve_references()
    c.train.update(dict(num_steps=2, checkpoint_every=1, keep_checkpoints=3, ema_decay=EMA_DECAY))
    c.optimizer.update(dict(learning_rate=1e-3, warmup_steps=0))
    workdir = tmp_path_factory.mktemp("run")
    trainer.train(c, workdir)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    target = trainer.build_run(c, mesh)
    initial = jax.device_get(target.state.params)
    checkpoints = trainer.checkpointer(c, workdir)
    states = [checkpoints.restore_state(step, target.state) for step in (1, 2)]
    checkpoints.close()
    return c, workdir, initial, [jax.device_get(s) for s in states]


def _flat(tree) -> dict[str, np.ndarray]:
    return {
        "/".join(str(p) for p in path): np.asarray(var.get_value())
        for path, var in nnx.to_flat_state(tree)
    }


def test_ema_is_the_exponential_average_of_the_parameters(run):
    _, _, initial, states = run
    ema = {k: v.astype(np.float64) for k, v in _flat(initial).items()}
    # ema_t = d_t * ema_{t-1} + (1 - d_t) * params_t from ema_0 = params_0, with diffusers' warm-up
    # d_t = min(decay, t / (9 + t)) for the t-th update (1-based): 0.1, then 2/11
    for t, state in enumerate(states, start=1):
        d = min(EMA_DECAY, t / (9 + t))
        params = _flat(state.params)
        ema = {k: d * ema[k] + (1 - d) * params[k] for k in ema}
        got = _flat(state.ema)
        assert got.keys() == ema.keys()
        assert max(max_diff(got[k], ema[k]) for k in ema) <= EMA_TOL
    last = _flat(states[-1].params)
    assert max(max_diff(last[k], ema[k]) for k in ema) > 100 * EMA_TOL  # not the raw weights


@pytest.mark.parametrize(
    "flags, weights, dtype",
    [
        (["--weights", "ema"], "ema", "float32"),
        (
            ["--weights", "raw", "--dtype", "bfloat16", "--format", "diffusers"],
            "params",
            "bfloat16",
        ),
    ],
    ids=["ema", "raw_bfloat16_diffusers"],
)
def test_export_command_writes_the_chosen_weights(run, tmp_path, flags, weights, dtype):
    _, workdir, _, states = run
    out = tmp_path / "export"
    export.main([str(workdir), str(out), *flags])
    stored = map_safetensors(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert {str(v.dtype) for v in stored.values()} == {dtype}
    loaded, _ = load_subject_diffusion(out)
    got = params_of(loaded)
    want = _flat(getattr(states[-1], weights))
    assert want and set(want) <= set(got)
    for key, value in want.items():
        expected = np.asarray(jax.numpy.asarray(value).astype(dtype).astype(np.float32))
        np.testing.assert_array_equal(got[key].astype(np.float32), expected, err_msg=key)
    if dtype == "bfloat16":
        unet = UNet2DConditionModel.from_pretrained(out / "unet", torch_dtype=torch.bfloat16)
        assert unet.conv_in.weight.dtype == torch.bfloat16
