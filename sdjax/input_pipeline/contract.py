"""The data contract: shapes and dtypes of one training example out of the reader.

Known without TensorFlow, so that the training step compiles for them while TensorFlow loads;
`pipeline.output_signature` gives them as tf.data specs.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from sdjax.tokenizer import MAX_LENGTH


def example_shapes(cfg: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of each key of one example (no batch axis) for the data config `cfg`."""
    r, s, size = cfg.resolution, cfg.max_subjects, cfg.subject_size
    latent = r // cfg.latent_downsample
    f32, i32, flag = np.float32, np.int32, np.bool_
    shapes = {
        "image": ((r, r, 3), f32),
        "location_mask": ((latent, latent, 1), f32),
        "subject_pixels": ((s, size, size, 3), f32),
        "subject_boxes": ((s, 4), f32),
        "subject_valid": ((s,), flag),
        "input_ids": ((MAX_LENGTH,), i32),
        "placeholder_positions": ((s,), i32),
        "entity_positions": ((s,), i32),
        "drop_text": ((), flag),
        "drop_mask": ((), flag),
        "drop_subjects": ((), flag),
    }
    for m in cfg.attention_map_sizes:
        shapes[f"subject_masks_{m}"] = ((s, m, m), f32)
    if cfg.cached_latents:
        shapes["latent_moments"] = (latent_moments_shape(cfg), f32)
    return {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, dtype) in shapes.items()}


def latent_moments_shape(cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(R/f, R/f, 2C): the VAE posterior's mean and log-variance channels at the crop size."""
    latent = cfg.resolution // cfg.latent_downsample
    return (latent, latent, 2 * cfg.latent_channels)
