"""Pre-fit the image encoder as a classifier of labelled subject references, then export it.

    result = fit_image_encoder(config, workdir, source)  # source: a ReferenceSource

A world no pretrained CLIP has seen needs an image encoder whose features already tell its
subjects apart, as SPEC's frozen CLIP tells real ones apart. The fit trains sdjax's
`CLIPVisionModelWithProjection` (sizes of `config.model.image_encoder`) with linear heads, one per
label (e.g. class, colour, pattern), on two features: the projected CLS embedding (what CLS
fusion reads) and the mean patch token (what the grounding net reads). The loss is the sum of
their cross-entropies. Batches are drawn from a fixed pool of labelled references, flipped at
random. The heads are dropped at export.

`encoder_fit` keys: batch_size, num_steps, learning_rate, warmup (linear warm-up steps, then
cosine decay to 0), weight_decay, seed, log_every.

WORKDIR holds `metrics.jsonl`, `tensorboard/`, `encoder_fit.json` (the held-out accuracies),
`export/` (a transformers `CLIPVisionModelWithProjection` folder) and `STAGE.json` (as
`sdjax.stages`): a later call with the same settings returns the stored result. The fit is short
and keeps no checkpoints: an interrupted one starts over.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict
from tqdm import tqdm

from sdjax.export import write_image_encoder
from sdjax.models.image_encoder import CLIPVisionConfig, CLIPVisionModelWithProjection
from sdjax.models.init import init_module
from sdjax.models.layers import linear
from sdjax.stages import Stage
from sdjax.training.batches import map_batches
from sdjax.training.optimizer import warmup_cosine_schedule

if TYPE_CHECKING:
    from sdjax.training.metrics import MetricsWriter

EXPORT_DIR = "export"
RESULT_FILE = "encoder_fit.json"
ALL_RIGHT = "all"  # the accuracy name of every label right at once


class Labelled(Protocol):
    """Images (N, s, s, 3), CLIP-normalised, and their (N,) int labels by name."""

    pixels: np.ndarray
    labels: dict[str, np.ndarray]


class ReferenceSource(Protocol):
    """Where the labelled references come from."""

    label_sizes: dict[str, int]  # label name → number of values
    settings: dict[str, Any]  # what the references are made with (part of the stage's key)

    def training(self) -> Labelled:
        """The pool trained on."""

    def held_out(self) -> dict[str, Labelled]:
        """Named sets scored at the end (never trained on)."""


@dataclasses.dataclass(frozen=True)
class EncoderFitResult:
    step: int
    accuracy: dict[str, dict[str, float]]  # held-out set name → label name (and "all") → share
    export_dir: Path
    reused: bool = False  # True: a finished fit with the same settings was returned as stored


class ReferenceClassifier(nnx.Module):
    """The image encoder with linear heads over its CLS embedding and its mean patch token."""

    def __init__(self, config: CLIPVisionConfig, label_sizes: Mapping[str, int], *, rngs: nnx.Rngs):
        self.label_sizes = dict(label_sizes)
        total = sum(self.label_sizes.values())
        self.encoder = CLIPVisionModelWithProjection(config, rngs=rngs)
        self.cls_head = linear(config.projection_dim, total, rngs=rngs)
        self.patch_head = linear(config.hidden_size, total, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Logits by label name, from the CLS embedding and from the mean patch token."""
        cls, patches = self.encoder(pixels)
        return self._split(self.cls_head(cls)), self._split(self.patch_head(patches.mean(1)))

    def _split(self, logits: jax.Array) -> dict[str, jax.Array]:
        bounds = np.cumsum(list(self.label_sizes.values()))[:-1]
        return dict(zip(self.label_sizes, jnp.split(logits, bounds, axis=-1), strict=True))


def classification_loss(
    model: ReferenceClassifier, pixels: jax.Array, labels: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Summed cross-entropy of both heads over every label; the CLS head's accuracy per label."""
    from_cls, from_patches = model(pixels)
    loss = sum(
        optax.softmax_cross_entropy_with_integer_labels(logits[k], labels[k]).mean()
        for logits in (from_cls, from_patches)
        for k in labels
    )
    accuracy = {k: jnp.mean(from_cls[k].argmax(-1) == labels[k]) for k in labels}
    return loss, accuracy


def accuracy(predicted: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Share right per label, and of every label right at once (`ALL_RIGHT`)."""
    right = {k: predicted[k] == labels[k] for k in labels}
    shares = {k: float(np.mean(v)) for k, v in right.items()}
    shares[ALL_RIGHT] = float(np.mean(np.logical_and.reduce(list(right.values()))))
    return shares


def stage_settings(config: ConfigDict, source: ReferenceSource) -> dict[str, Any]:
    """What a finished fit is keyed by: its section, the encoder's sizes and the references'."""
    return {
        "encoder_fit": config.encoder_fit.to_dict(),
        "image_encoder": config.model.image_encoder.to_dict(),
        "references": source.settings,
    }


def fit_image_encoder(
    config: ConfigDict, workdir: str | Path, source: ReferenceSource
) -> EncoderFitResult:
    """Fits (or returns the finished) image encoder of `config` in `workdir` on `source`."""
    workdir = Path(workdir)
    stage = Stage(workdir)
    settings = stage_settings(config, source)
    if stage.is_complete(settings):
        stored = json.loads((workdir / RESULT_FILE).read_text())
        return EncoderFitResult(stored["step"], stored["accuracy"], workdir / EXPORT_DIR, True)
    stage.marker.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config.encoder_fit
    model = build_classifier(config, source.label_sizes)
    from sdjax.training.metrics import MetricsWriter  # noqa: PLC0415 (it loads TensorFlow)

    model = _train(model, source.training(), cfg, MetricsWriter(workdir))
    scores = {
        name: accuracy(predict(model, labelled.pixels, cfg.batch_size), labelled.labels)
        for name, labelled in source.held_out().items()
    }
    files = write_image_encoder(model.encoder, workdir / EXPORT_DIR)
    result_file = workdir / RESULT_FILE
    result_file.write_text(json.dumps({"step": cfg.num_steps, "accuracy": scores}, indent=2))
    stage.mark_complete([*files, result_file], settings)
    return EncoderFitResult(cfg.num_steps, scores, workdir / EXPORT_DIR)


def build_classifier(config: ConfigDict, label_sizes: Mapping[str, int]) -> ReferenceClassifier:
    sizes = CLIPVisionConfig(**config.model.image_encoder.to_dict())
    return init_module(
        lambda rngs: ReferenceClassifier(sizes, label_sizes, rngs=rngs), config.encoder_fit.seed
    )


def predict(
    model: ReferenceClassifier, pixels: np.ndarray, batch_size: int
) -> dict[str, np.ndarray]:
    """The CLS head's predicted label indices of `pixels`, by label name."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def labels_of(state: nnx.State, batch: jax.Array) -> dict[str, jax.Array]:
        from_cls, _ = nnx.merge(graphdef, state)(batch)
        return {k: v.argmax(-1) for k, v in from_cls.items()}

    return map_batches(lambda batch: labels_of(state, batch), pixels, batch_size)


def _train(
    model: ReferenceClassifier, pool: Labelled, cfg: ConfigDict, writer: MetricsWriter
) -> ReferenceClassifier:
    """`num_steps` of AdamW on random flipped batches of `pool`."""
    graphdef, params = nnx.split(model)
    schedule = warmup_cosine_schedule(cfg.learning_rate, cfg.warmup, cfg.num_steps)
    optimizer = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, pixels, labels):
        def loss_fn(p):
            return classification_loss(nnx.merge(graphdef, p), pixels, labels)

        (loss, shares), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **shares}

    rng = np.random.default_rng(cfg.seed)
    for index in tqdm(range(1, cfg.num_steps + 1), desc="image encoder"):
        chosen = rng.integers(len(pool.pixels), size=cfg.batch_size)
        flip = rng.random(cfg.batch_size) < 0.5
        pixels = np.where(
            flip[:, None, None, None], pool.pixels[chosen, :, ::-1], pool.pixels[chosen]
        )
        labels = {k: v[chosen] for k, v in pool.labels.items()}
        params, opt_state, metrics = step(params, opt_state, pixels, labels)
        if index % cfg.log_every == 0 or index == cfg.num_steps:
            writer.write_scalars(index, {k: float(v) for k, v in jax.device_get(metrics).items()})
    writer.close()
    return nnx.merge(graphdef, params)
