"""CLIP text (with subject fusion) and vision encoders vs transformers, from saved safetensors."""

import shutil
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from sdjax.models.image_encoder import CLIPVisionConfig, CLIPVisionModelWithProjection
from sdjax.models.text_encoder import (
    CLIPTextConfig,
    CLIPTextModel,
    CLSProjector,
    replace_placeholders,
)
from sdjax.weights.clip import load_image_encoder, load_text_encoder
from sdjax.weights.core import WeightLoadError, export_state

TOL = 1e-4  # float32 parity, outputs are O(1)
BF16_TOL = 0.05  # bfloat16 compute vs float32 (outputs up to ~3; measured ~0.03)
TEXT = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
)
VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=28,
    patch_size=14,
    projection_dim=16,
    hidden_act="gelu",
)


def perturb_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Moves every parameter off its initial value (norm scales off 1, biases off 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def save(model, folder) -> str:
    model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


@pytest.fixture(scope="module", params=["quick_gelu", "gelu"])
def text_pair(request, tmp_path_factory):
    """(transformers model, sdjax model, folder) for one activation."""
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(**TEXT, hidden_act=request.param)
    ref = perturb_(transformers.CLIPTextModel(config), seed=1)
    folder = save(ref, tmp_path_factory.mktemp(f"text_{request.param}"))
    return ref, load_text_encoder(folder), folder


@pytest.fixture(scope="module")
def vision_pair(tmp_path_factory):
    torch.manual_seed(0)
    ref = perturb_(
        transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION)), seed=2
    )
    folder = save(ref, tmp_path_factory.mktemp("vision"))
    return ref, load_image_encoder(folder), folder


def token_ids(batch: int = 2, length: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(3, TEXT["vocab_size"], (batch, length))


def reference_text(ref, ids: np.ndarray, replace=None) -> np.ndarray:
    """transformers' text model run from (optionally edited) input embeddings, with a causal mask."""
    with torch.no_grad():
        embeds = ref.embeddings.token_embedding(torch.from_numpy(ids))
        if replace is not None:
            for (b, pos), row in replace.items():
                embeds[b, pos] = torch.from_numpy(row)
        hidden = ref.embeddings(inputs_embeds=embeds)
        length = ids.shape[1]
        mask = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)[None, None]
        hidden = ref.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        return ref.final_layer_norm(hidden).numpy()


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def test_text_encoder_matches_transformers(text_pair):
    ref, ours, _ = text_pair
    ids = token_ids()
    with torch.no_grad():
        expected = ref(torch.from_numpy(ids)).last_hidden_state.numpy()
    assert np.abs(expected).max() > 0.5
    assert max_diff(ours(jnp.asarray(ids)), expected) <= TOL
    # the explicit-mask reference used for fusion agrees with transformers' own forward
    assert max_diff(reference_text(ref, ids), expected) <= TOL


def test_fusion_replaces_placeholder_embeddings(text_pair):
    ref, ours, _ = text_pair
    ids = token_ids()
    d = TEXT["hidden_size"]
    subjects = np.random.default_rng(1).normal(size=(2, 2, d)).astype(np.float32)
    positions = np.array([[3, 9], [5, 0]], np.int32)
    valid = np.array([[True, True], [True, False]])
    expected = reference_text(
        ref, ids, {(0, 3): subjects[0, 0], (0, 9): subjects[0, 1], (1, 5): subjects[1, 0]}
    )
    got = ours(jnp.asarray(ids), jnp.asarray(subjects), jnp.asarray(positions), jnp.asarray(valid))
    assert max_diff(got, expected) <= TOL
    # causal: outputs before the first placeholder are those of the plain prompt
    plain = np.asarray(ours(jnp.asarray(ids)))
    np.testing.assert_allclose(np.asarray(got)[0, :3], plain[0, :3], atol=TOL)
    np.testing.assert_allclose(np.asarray(got)[1, :5], plain[1, :5], atol=TOL)
    assert max_diff(np.asarray(got)[1, 5:], plain[1, 5:]) > 1e-2

    # no valid subject: exactly the plain encoder
    none_valid = ours(
        jnp.asarray(ids), jnp.asarray(subjects), jnp.asarray(positions), jnp.zeros((2, 2), bool)
    )
    assert max_diff(none_valid, plain) == 0.0


def test_replace_placeholders_changes_only_valid_positions():
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.normal(size=(2, 8, 4)), jnp.float32)
    subjects = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    positions = jnp.array([[1, 6, 6], [0, 2, 7]], jnp.int32)
    valid = jnp.array([[True, True, False], [False, True, True]])
    out = np.asarray(replace_placeholders(tokens, subjects, positions, valid))
    expected = np.array(tokens)
    expected[0, 1], expected[0, 6] = subjects[0, 0], subjects[0, 1]
    expected[1, 2], expected[1, 7] = subjects[1, 1], subjects[1, 2]
    np.testing.assert_array_equal(out, expected)


def test_text_encoder_bfloat16_close_to_float32(text_pair):
    _, ours, folder = text_pair
    ids = jnp.asarray(token_ids())
    low = load_text_encoder(folder, dtype=jnp.bfloat16)
    out = low(ids)
    assert out.dtype == jnp.bfloat16
    assert low.text_model.encoder.layers[0].mlp.fc1.kernel[...].dtype == jnp.float32
    assert max_diff(out, ours(ids)) <= BF16_TOL


def test_text_encoder_remat_gradients_match(text_pair):
    _, ours, folder = text_pair
    ids = jnp.asarray(token_ids())
    remat = load_text_encoder(folder, remat=True)

    def loss(model):
        return jnp.mean(model(ids) ** 2)

    def remat_count(model) -> int:
        graph, state = nnx.split(model)
        return str(jax.make_jaxpr(lambda s: nnx.merge(graph, s)(ids))(state)).count("remat")

    assert remat_count(ours) == 0
    assert remat_count(remat) == TEXT["num_hidden_layers"]
    grad = nnx.jit(nnx.grad(loss))
    g_plain, g_remat = grad(ours), grad(remat)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_vision_encoder_matches_transformers(vision_pair):
    ref, ours, _ = vision_pair
    pixels = np.random.default_rng(3).normal(size=(2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        out = ref(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    cls, patches = ours(jnp.asarray(pixels))
    assert cls.shape == (2, VISION["projection_dim"])
    assert patches.shape == (2, 4, VISION["hidden_size"])
    assert max_diff(cls, out.image_embeds.numpy()) <= TOL
    assert max_diff(patches, out.last_hidden_state[:, 1:].numpy()) <= TOL


def test_vision_encoder_bfloat16_close_to_float32(vision_pair):
    _, ours, folder = vision_pair
    pixels = jnp.asarray(np.random.default_rng(3).normal(size=(2, 28, 28, 3)), jnp.float32)
    low = load_image_encoder(folder, dtype=jnp.bfloat16)
    for got, want in zip(low(pixels), ours(pixels), strict=True):
        assert got.dtype == jnp.bfloat16
        assert max_diff(got, want) <= BF16_TOL


def test_vision_encoder_rejects_wrong_image_size(vision_pair):
    _, ours, _ = vision_pair
    with pytest.raises(ValueError, match="28x28"):
        ours(jnp.zeros((1, 32, 32, 3)))


def test_image_encoder_from_clip_model_folder(vision_pair, tmp_path):
    vision_ref, _, _ = vision_pair
    config = transformers.CLIPConfig(
        text_config=dict(TEXT), vision_config=dict(VISION), projection_dim=16
    )
    clip = transformers.CLIPModel(config)
    clip.vision_model.load_state_dict(vision_ref.vision_model.state_dict())
    clip.visual_projection.load_state_dict(vision_ref.visual_projection.state_dict())
    ours = load_image_encoder(save(clip, tmp_path))
    pixels = np.random.default_rng(4).normal(size=(1, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        expected = vision_ref(torch.from_numpy(pixels).permute(0, 3, 1, 2)).image_embeds
    assert max_diff(ours(jnp.asarray(pixels))[0], expected.numpy()) <= TOL


SD2_TEXT = dict(  # OpenCLIP ViT-H/14 text tower as shipped in SD 2.x `text_encoder/config.json`
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=23,
    hidden_act="gelu",
    vocab_size=49408,
    max_position_embeddings=77,
)
VIT_H14 = dict(  # LAION CLIP ViT-H/14 vision tower
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=16,
    num_hidden_layers=32,
    image_size=224,
    patch_size=14,
    projection_dim=1024,
    hidden_act="gelu",
)


def param_count(module: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize(
    "ours, theirs, config",
    [
        (CLIPTextModel, transformers.CLIPTextModel, SD2_TEXT),
        (CLIPVisionModelWithProjection, transformers.CLIPVisionModelWithProjection, VIT_H14),
    ],
)
def test_full_size_towers_match_transformers_parameter_count(ours, theirs, config):
    config_cls = (
        transformers.CLIPTextConfig if "vocab_size" in config else transformers.CLIPVisionConfig
    )
    with torch.device("meta"):
        reference = theirs(config_cls(**config))
    sdjax_config = (CLIPTextConfig if "vocab_size" in config else CLIPVisionConfig).from_hf(config)
    model = nnx.eval_shape(lambda: ours(sdjax_config, rngs=nnx.Rngs(0)))
    assert param_count(model) == sum(p.numel() for p in reference.parameters())
    if ours is CLIPVisionModelWithProjection:
        assert sdjax_config.num_patches == 256


def edit_checkpoint(folder, tmp_path, edit) -> str:
    """A copy of the folder whose tensors went through `edit(dict)`."""
    out = tmp_path / "edited"
    shutil.copytree(folder, out)
    file = out / "model.safetensors"
    tensors = safetensors.numpy.load_file(str(file))
    edit(tensors)
    safetensors.numpy.save_file(tensors, str(file))
    return str(out)


def test_wrong_shape_names_key_and_shapes(text_pair, tmp_path):
    _, _, folder = text_pair
    key = "embeddings.position_embedding.weight"

    def shrink(t):
        t[key] = t[key][:8]

    with pytest.raises(
        WeightLoadError, match=r"text_model\.embeddings\.position_embedding\.weight"
    ) as e:
        load_text_encoder(edit_checkpoint(folder, tmp_path, shrink))
    assert "(8, 32)" in str(e.value) and "(16, 32)" in str(e.value)


def test_missing_key_is_an_error(vision_pair, tmp_path):
    _, _, folder = vision_pair

    def drop(t):
        del t["vision_model.pre_layrnorm.weight"]

    with pytest.raises(WeightLoadError, match=r"missing vision_model\.pre_layrnorm\.weight"):
        load_image_encoder(edit_checkpoint(folder, tmp_path, drop))


def test_pickled_weights_refused(text_pair, tmp_path):
    ref, _, _ = text_pair
    ref.config.save_pretrained(tmp_path)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightLoadError, match="pytorch_model.bin"):
        load_text_encoder(tmp_path)


def test_pipeline_root_with_text_encoder_subfolder(text_pair, tmp_path):
    ref, ours, _ = text_pair
    save(ref, tmp_path / "text_encoder")
    ids = jnp.asarray(token_ids())
    assert max_diff(load_text_encoder(tmp_path)(ids), ours(ids)) == 0.0


def test_cls_projector_shapes_and_init():
    d_cls, d_txt = 48, 32
    proj = CLSProjector(d_cls, d_txt, rngs=nnx.Rngs(0))
    out = proj(jnp.ones((2, 3, d_cls)))
    assert out.shape == (2, 3, d_txt) and out.dtype == jnp.float32
    np.testing.assert_array_equal(proj.layer_norm.scale[...], np.ones(d_cls))
    np.testing.assert_array_equal(proj.layer_norm.bias[...], np.zeros(d_cls))
    for layer, fan_in in ((proj.fc1, d_cls), (proj.fc2, d_txt)):
        np.testing.assert_array_equal(layer.bias[...], 0.0)
        std = float(np.std(layer.kernel[...]))
        assert 0.8 < std * fan_in**0.5 < 1.2

    # same math as LayerNorm → Linear → exact GELU → Linear in PyTorch
    torch_proj = torch.nn.Sequential(
        OrderedDict(
            layer_norm=torch.nn.LayerNorm(d_cls),
            fc1=torch.nn.Linear(d_cls, d_txt),
            act=torch.nn.GELU(),
            fc2=torch.nn.Linear(d_txt, d_txt),
        )
    )
    torch_proj.load_state_dict({k: torch.from_numpy(v) for k, v in export_state(proj).items()})
    x = np.random.default_rng(5).normal(size=(4, d_cls)).astype(np.float32)
    with torch.no_grad():
        expected = torch_proj(torch.from_numpy(x)).numpy()
    assert max_diff(proj(jnp.asarray(x)), expected) <= TOL
