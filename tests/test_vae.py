"""AutoencoderKL vs diffusers, from saved safetensors; the latent Gaussian; bad checkpoints."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from flax import nnx

from sdjax.models.vae import LOGVAR_RANGE, AutoencoderKL, DiagonalGaussian, VAEConfig
from sdjax.weights.core import WeightLoadError
from sdjax.weights.vae import load_vae

TOL = 1e-4  # float32 parity, outputs are O(1)
BF16_TOL = 0.1  # bfloat16 compute vs float32 (outputs up to ~3; measured ~0.05)
CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 16),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
)
WEIGHTS = "diffusion_pytorch_model.safetensors"


def build_reference(**overrides) -> TorchAutoencoderKL:
    """A diffusers VAE with every parameter moved off its initial value."""
    torch.manual_seed(0)
    model = TorchAutoencoderKL(**{**CONFIG, **overrides})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def vae_pair(tmp_path_factory):
    ref = build_reference()
    folder = tmp_path_factory.mktemp("vae")
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, load_vae(folder), folder


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def latents() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(2, 8, 8, 4)).astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def test_encode_matches_diffusers(vae_pair, images):
    ref, ours, _ = vae_pair
    with torch.no_grad():
        dist = ref.encode(nchw(images)).latent_dist
    posterior = ours.encode(jnp.asarray(images))
    assert posterior.mean.shape == (2, 8, 8, 4) and posterior.mean.dtype == jnp.float32
    assert ours.downsample_factor == 4
    assert np.abs(nhwc(dist.mean)).max() > 0.5
    assert max_diff(posterior.mean, nhwc(dist.mean)) <= TOL
    assert max_diff(posterior.logvar, nhwc(dist.logvar)) <= TOL
    assert max_diff(posterior.std, nhwc(dist.std)) <= TOL


def test_decode_matches_diffusers(vae_pair, latents):
    ref, ours, _ = vae_pair
    with torch.no_grad():
        expected = nhwc(ref.decode(nchw(latents)).sample)
    decoded = ours.decode(jnp.asarray(latents))
    assert decoded.shape == (2, 32, 32, 3)
    assert np.abs(expected).max() > 0.5
    assert max_diff(decoded, expected) <= TOL
    assert ours.config.scaling_factor == pytest.approx(0.18215)


def test_bfloat16_close_to_float32(vae_pair, images, latents):
    _, ours, folder = vae_pair
    low = load_vae(folder, dtype=jnp.bfloat16)
    assert low.decoder.conv_in.kernel[...].dtype == jnp.float32
    assert (
        max_diff(low.encode(jnp.asarray(images)).mean, ours.encode(jnp.asarray(images)).mean)
        <= BF16_TOL
    )
    decoded = low.decode(jnp.asarray(latents))
    assert decoded.dtype == jnp.bfloat16
    assert max_diff(decoded, ours.decode(jnp.asarray(latents))) <= BF16_TOL


def test_without_mid_attention_and_quant_convs(tmp_path, images, latents):
    ref = build_reference(
        mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False
    )
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_vae(tmp_path)
    assert len(ours.encoder.mid_block.attentions) == 0 and ours.quant_conv is None
    with torch.no_grad():
        mean = nhwc(ref.encode(nchw(images)).latent_dist.mean)
        decoded = nhwc(ref.decode(nchw(latents)).sample)
    assert max_diff(ours.encode(jnp.asarray(images)).mean, mean) <= TOL
    assert max_diff(ours.decode(jnp.asarray(latents)), decoded) <= TOL


def test_stable_diffusion_vae_parameter_count():
    config = VAEConfig()  # Stable Diffusion's VAE
    with torch.device("meta"):
        reference = TorchAutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
        )
    assert VAEConfig(block_out_channels=[128, 256, 512, 512]) == config  # lists become tuples
    model = nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == sum(p.numel() for p in reference.parameters()) == 83_653_863


def edited_copy(folder, tmp_path, edit) -> str:
    """A copy of the VAE folder whose tensors went through `edit(dict) -> dict`."""
    out = tmp_path / "edited"
    shutil.copytree(folder, out)
    tensors = safetensors.numpy.load_file(str(out / WEIGHTS))
    safetensors.numpy.save_file(edit(tensors), str(out / WEIGHTS))
    return str(out)


def test_deprecated_attention_names_load(vae_pair, latents, tmp_path):
    _, ours, folder = vae_pair
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def downgrade(tensors):
        renamed = {}
        for key, value in tensors.items():
            for new, dep in old.items():
                key = key.replace(f"attentions.0.{new}.", f"attentions.0.{dep}.")
            renamed[key] = value
        assert any(".proj_attn." in k for k in renamed)
        return renamed

    legacy = load_vae(edited_copy(folder, tmp_path, downgrade))
    z = jnp.asarray(latents)
    assert max_diff(legacy.decode(z), ours.decode(z)) == 0.0


def test_pipeline_root_with_vae_subfolder(vae_pair, latents, tmp_path):
    _, ours, folder = vae_pair
    shutil.copytree(folder, tmp_path / "vae")
    z = jnp.asarray(latents)
    assert max_diff(load_vae(tmp_path).decode(z), ours.decode(z)) == 0.0


def test_wrong_shape_and_missing_key(vae_pair, tmp_path):
    _, _, folder = vae_pair
    bad = "decoder.conv_in.weight"
    gone = "encoder.mid_block.attentions.0.group_norm.bias"

    def corrupt(tensors):
        tensors[bad] = tensors[bad][:, :3]
        del tensors[gone]
        return tensors

    with pytest.raises(WeightLoadError) as err:
        load_vae(edited_copy(folder, tmp_path, corrupt))
    message = str(err.value)
    assert (
        f"wrong shape for {bad}: checkpoint (16, 3, 3, 3), model expects (16, 4, 3, 3)" in message
    )
    assert f"missing {gone}" in message


def test_pickled_weights_refused(vae_pair, tmp_path):
    ref, _, folder = vae_pair
    shutil.copy(f"{folder}/config.json", tmp_path)
    torch.save(ref.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightLoadError, match="diffusion_pytorch_model.bin"):
        load_vae(tmp_path)


def test_unsupported_block_type_is_an_error(vae_pair, tmp_path):
    _, _, folder = vae_pair
    config = json.loads((folder / "config.json").read_text())
    config["down_block_types"][0] = "AttnDownEncoderBlock2D"
    shutil.copytree(folder, tmp_path / "v")
    (tmp_path / "v" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="AttnDownEncoderBlock2D"):
        load_vae(tmp_path / "v")


def test_diagonal_gaussian_sampling_statistics():
    mean = jnp.broadcast_to(jnp.array([0.5, -1.0]), (200, 100, 2))
    logvar = jnp.broadcast_to(jnp.log(jnp.array([4.0, 0.25])), (200, 100, 2))
    dist = DiagonalGaussian(mean=mean, logvar=logvar)
    samples = np.asarray(dist.sample(jax.random.key(0))).reshape(-1, 2)
    # 20000 draws per channel: standard errors 0.014 (std 2) and 0.0035 (std 0.5)
    np.testing.assert_allclose(samples.mean(0), [0.5, -1.0], atol=0.06)
    np.testing.assert_allclose(samples.std(0), [2.0, 0.5], rtol=0.03)
    np.testing.assert_array_equal(dist.mode(), mean)
    np.testing.assert_array_equal(dist.sample(jax.random.key(0)), dist.sample(jax.random.key(0)))
    assert max_diff(dist.sample(jax.random.key(0)), dist.sample(jax.random.key(1))) > 0.1


def test_diagonal_gaussian_clamps_logvar():
    moments = jnp.concatenate([jnp.zeros((1, 2, 2, 4)), jnp.full((1, 2, 2, 4), 50.0)], axis=-1)
    moments = moments.at[..., -1].set(-100.0)
    dist = DiagonalGaussian.from_moments(moments)
    assert dist.mean.shape == (1, 2, 2, 4)
    np.testing.assert_array_equal(dist.logvar[..., :3], LOGVAR_RANGE[1])
    np.testing.assert_array_equal(dist.logvar[..., 3], LOGVAR_RANGE[0])
    np.testing.assert_allclose(dist.std[..., 0], np.exp(0.5 * LOGVAR_RANGE[1]), rtol=1e-6)
