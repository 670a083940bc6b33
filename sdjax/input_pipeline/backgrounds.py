"""Backgrounds of the training subject images (`data.background`), as TensorFlow ops.

The reference code pastes each segmented subject on a random image of an object-free background
set (BG-20k), resized to the subject size on its shorter side and randomly cropped square:
"folder" does that with the images of `data.background_dir`; "procedural" draws object-free
backgrounds instead (a two-colour linear gradient under a sinusoidal texture); "noise" is uniform
noise; "white" a blank page; "random" the next training image of the batch (which holds objects
of its own).
"""

from __future__ import annotations

import math
from pathlib import Path

import tensorflow as tf

BACKGROUNDS = ("white", "random", "noise", "procedural", "folder")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Uniform draws of one procedural background: two colours (6), gradient angle, texture
# orientation, frequency, phase, amplitude, and texture tint (3).
PROCEDURAL_DRAWS = 14
MAX_TEXTURE_CYCLES = 8.0  # texture periods across the canvas, at most
MAX_TEXTURE_AMPLITUDE = 0.25
# Draws of one folder background: which image, and the crop offset (2).
FOLDER_DRAWS = 3


def background_files(folder: str) -> list[str]:
    """The image files of a background folder, sorted; a clear error when there are none."""
    path = Path(folder)
    if not folder or not path.is_dir():
        raise ValueError(f"data.background_dir={folder!r} is not a folder of background images")
    files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"data.background_dir={folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def procedural(u: tf.Tensor, size: int) -> tf.Tensor:
    """(..., size, size, 3) in [0, 1] from draws u (..., PROCEDURAL_DRAWS)."""
    grid = (tf.range(size, dtype=tf.float32) + 0.5) / size - 0.5
    y, x = grid[:, None], grid[None, :]

    def along(angle):  # (..., size, size) coordinate along a direction, in [-0.71, 0.71]
        angle = angle[..., None, None]
        return tf.cos(angle) * x + tf.sin(angle) * y

    colour0, colour1 = u[..., None, None, 0:3], u[..., None, None, 3:6]
    ramp = tf.clip_by_value(along(2 * math.pi * u[..., 6]) + 0.5, 0.0, 1.0)[..., None]
    cycles = 1.0 + (MAX_TEXTURE_CYCLES - 1.0) * u[..., 8]
    wave = tf.sin(
        2 * math.pi * cycles[..., None, None] * along(2 * math.pi * u[..., 7])
        + 2 * math.pi * u[..., 9, None, None]
    )
    tint = (u[..., None, None, 11:14] - 0.5) * 2.0
    texture = MAX_TEXTURE_AMPLITUDE * u[..., 10, None, None, None] * wave[..., None] * tint
    return tf.clip_by_value(colour0 * (1.0 - ramp) + colour1 * ramp + texture, 0.0, 1.0)


def from_folder(files: tf.Tensor, u: tf.Tensor, size: int) -> tf.Tensor:
    """(N, size, size, 3) in [0, 1]: per draw u (N, FOLDER_DRAWS), a file of `files`, resized to
    `size` on its shorter side (bilinear) and cropped square at a random offset."""

    def one(draws):
        index = tf.minimum(
            tf.cast(draws[0] * tf.cast(tf.size(files), tf.float32), tf.int32), tf.size(files) - 1
        )
        image = tf.io.decode_image(
            tf.io.read_file(files[index]), channels=3, expand_animations=False
        )
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = size / tf.reduce_min(shape)
        resized_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
        resized = tf.image.resize(tf.cast(image, tf.float32) / 255.0, resized_shape, "bilinear")
        room = tf.cast(resized_shape - size + 1, tf.float32)
        top, left = tf.unstack(tf.cast(tf.floor(draws[1:3] * room), tf.int32))
        return tf.clip_by_value(resized[top : top + size, left : left + size], 0.0, 1.0)

    return tf.map_fn(one, u, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


def subject_backgrounds(
    kind: str, files: tf.Tensor | None, shape: tuple[int, int], size: int, seed: tf.Tensor
) -> tf.Tensor:
    """(B, S, size, size, 3) in [0, 1] of the noise, procedural or folder kinds for `shape`
    (B, S) subject slots, from a stateless seed (2,)."""
    batch, slots = shape
    if kind == "noise":
        return tf.random.stateless_uniform([batch, slots, size, size, 3], seed)
    if kind == "procedural":
        return procedural(tf.random.stateless_uniform([batch, slots, PROCEDURAL_DRAWS], seed), size)
    if kind == "folder":
        draws = tf.random.stateless_uniform([batch * slots, FOLDER_DRAWS], seed)
        return tf.reshape(from_folder(files, draws, size), [batch, slots, size, size, 3])
    raise ValueError(f"no drawn backgrounds of kind {kind!r}; known: {BACKGROUNDS}")
