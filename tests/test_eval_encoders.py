"""The metric encoders vs transformers, from tiny random configs saved as safetensors: DINO's
`ViTModel` (CLS features) and CLIP's projected text tower (CLIP-T)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from sdjax.tokenizer import load_tokenizer
from sdjax.weights.clip import load_text_projection
from sdjax.weights.core import WeightLoadError
from sdjax.weights.vit import load_vit
from tests.test_clip import TEXT, VISION, max_diff, perturb_, save

TOL = 1e-4
VIT = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)


@pytest.fixture(scope="module")
def vit_pair(tmp_path_factory):
    torch.manual_seed(0)
    ref = perturb_(transformers.ViTModel(transformers.ViTConfig(**VIT)), seed=5)
    folder = save(ref, tmp_path_factory.mktemp("vit"))
    return ref, folder


def pixels(batch: int = 2, size: int = 32) -> np.ndarray:
    return np.random.default_rng(6).normal(size=(batch, size, size, 3)).astype(np.float32)


def test_vit_matches_transformers(vit_pair):
    ref, folder = vit_pair
    ours = load_vit(folder)
    x = pixels()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    got = ours(jnp.asarray(x))
    assert got.shape == (2, 1 + (32 // 8) ** 2, 32)
    assert np.abs(expected).max() > 0.5
    assert max_diff(got, expected) <= TOL
    assert max_diff(ours.cls_features(jnp.asarray(x)), expected[:, 0]) <= TOL


def test_vit_backbone_of_a_classifier_folder(vit_pair, tmp_path):
    ref, folder = vit_pair
    classifier = transformers.ViTForImageClassification(transformers.ViTConfig(**VIT, num_labels=3))
    classifier.vit.load_state_dict(ref.state_dict(), strict=False)
    x = jnp.asarray(pixels(1))
    got = load_vit(save(classifier, tmp_path))(x)
    assert max_diff(got, load_vit(folder)(x)) == 0.0


def test_a_folder_of_another_model_type_is_a_named_error(tmp_path):
    clip = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION))
    with pytest.raises(WeightLoadError, match=r"'clip_vision_model' model.*expected 'vit'"):
        load_vit(save(clip, tmp_path / "clip"))
    vit = transformers.ViTModel(transformers.ViTConfig(**VIT))
    with pytest.raises(WeightLoadError, match=r"'vit' model.*expected 'clip'"):
        load_text_projection(save(vit, tmp_path / "vit"))


@pytest.mark.parametrize("eos_token_id", [2, 49407])
def test_text_projection_matches_clip_text_features(eos_token_id, tmp_path):
    torch.manual_seed(0)
    text = {**TEXT, "vocab_size": 49408, "eos_token_id": eos_token_id, "pad_token_id": 49407}
    config = transformers.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)
    ref = perturb_(transformers.CLIPModel(config), seed=7)
    ours = load_text_projection(save(ref, tmp_path))
    tokenizer = load_tokenizer()
    batch = tokenizer(
        ["a dog in the jungle", "a red backpack on top of a purple rug in a forest"],
        padding="max_length",
        max_length=TEXT["max_position_embeddings"],
        truncation=True,
        return_tensors="np",
    )
    ids = batch["input_ids"]
    with torch.no_grad():
        expected = ref.get_text_features(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(batch["attention_mask"]),
        )
    expected = getattr(expected, "pooler_output", expected).numpy()
    got = ours(jnp.asarray(ids))
    assert got.shape == (2, 16)
    assert max_diff(got, expected) <= TOL
