"""The metric encoders, loaded from transformers folders and run in compiled batches.

DINO: a `ViTModel` folder (e.g. facebook/dino-vits16), CLS of `last_hidden_state`. CLIP: a
`CLIPModel` folder (e.g. openai/clip-vit-base-patch32): projected image embeddings (CLIP-I) and
projected text embeddings (CLIP-T), its own tokenizer when the folder has one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from transformers import CLIPTokenizer

from sdjax.tokenizer import load_tokenizer
from sdjax.weights.clip import load_image_encoder, load_text_projection
from sdjax.weights.core import expect_model_type, read_config
from sdjax.weights.vit import MODEL_TYPES as VIT_MODEL_TYPES
from sdjax.weights.vit import load_vit

CLIP_MODEL_TYPES = ("clip",)
TOKENIZER_FILE = "vocab.json"

Features = Callable[[np.ndarray], np.ndarray]


def compiled(module: nnx.Module, method: Callable[[nnx.Module, jax.Array], jax.Array]) -> Features:
    """`method(module, x)` as one compiled function of a NumPy batch."""
    graphdef, state = nnx.split(module)
    run = jax.jit(lambda s, x: method(nnx.merge(graphdef, s), x))
    return lambda x: np.asarray(run(state, x))


def in_batches(features: Features, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """`features` of `inputs` (N, ...) in batches of `batch_size`, the last padded (one shape)."""
    outputs = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
        outputs.append(features(padded)[: len(chunk)])
    return np.concatenate(outputs)


@dataclasses.dataclass(frozen=True)
class ClipScorer:
    """One CLIP model's image and text embeddings; `name` labels its metrics."""

    name: str
    image: Features
    text: Features
    tokenizer: CLIPTokenizer
    max_length: int

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), projection_dim) embeddings, each prompt padded and truncated."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="np",
        )["input_ids"]
        return self.text(ids)


def check_encoder_folders(dino: Path, clips: Sequence[Path]) -> None:
    """Fails fast, before any image is drawn, on a folder of the wrong model type."""
    expect_model_type(read_config(dino), dino, VIT_MODEL_TYPES)
    for clip in clips:
        expect_model_type(read_config(clip), clip, CLIP_MODEL_TYPES)


def load_dino(path: str | Path) -> Features:
    """DINO CLS features (B, hidden) of (B, crop, crop, 3) normalised images."""
    return compiled(load_vit(path), lambda model, x: model.cls_features(x))


def load_clip(path: str | Path) -> ClipScorer:
    """A CLIP scorer from a `CLIPModel` folder (another model type is a named error)."""
    folder = Path(path)
    expect_model_type(read_config(folder), folder, CLIP_MODEL_TYPES)
    vision = load_image_encoder(folder)
    text = load_text_projection(folder)
    if (folder / TOKENIZER_FILE).is_file():
        tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    else:
        tokenizer = load_tokenizer()
    return ClipScorer(
        name=folder.name,
        image=compiled(vision, lambda model, x: model(x)[0]),
        text=compiled(text, lambda model, ids: model(ids)),
        tokenizer=tokenizer,
        max_length=text.config.max_position_embeddings,
    )
