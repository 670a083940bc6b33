"""EXIF orientation of JPEG bytes, read and applied with TensorFlow ops (`sdjax.images` in-graph).

Records written by the sdjax builders hold upright pixels; records written by other tools may
hold a phone photo's sideways pixels and its EXIF orientation tag. The reader turns them as every
viewer does, so that boxes and masks drawn on the displayed photo line up.

Only what is needed is parsed: the first `Exif\\0\\0` header within the first APP segments, its
TIFF byte order, and the orientation tag (0x0112) among the first `MAX_ENTRIES` entries of IFD0.
Anything unreadable counts as upright (1).
"""

from __future__ import annotations

import tensorflow as tf

from sdjax.images import EXIF_ORIENTATION

EXIF_HEADER = b"Exif\x00\x00"
HEADER_SEARCH_BYTES = 65536 + 4  # the APP1 segment starts within the first APP segment's reach
MAX_ENTRIES = 64  # IFD0 entries searched for the orientation tag
_ENTRY_BYTES = 12
_SHORT = 3  # TIFF field type of the orientation value


def _unsigned(data: tf.Tensor, start: tf.Tensor, size: int, little: tf.Tensor) -> tf.Tensor:
    """The `size`-byte unsigned integers at each `start` (any shape) of int64 byte values, in the
    given byte order."""
    chunk = tf.gather(data, start[..., None] + tf.range(size, dtype=tf.int64))
    weights = tf.constant([256**i for i in range(size)], tf.int64)
    return tf.reduce_sum(chunk * tf.where(little, weights, tf.reverse(weights, [0])), axis=-1)


def jpeg_orientation(encoded: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (int32, 1 to 8) of JPEG bytes; 1 when there is none or it is invalid."""
    head = tf.strings.substr(encoded, 0, HEADER_SEARCH_BYTES)
    pieces = tf.raw_ops.StringSplitV2(input=head[None], sep=EXIF_HEADER, maxsplit=1).values
    found = tf.strings.substr(head, 0, 2) == b"\xff\xd8"  # a JPEG at all
    found &= tf.size(pieces) > 1
    start = tf.minimum(tf.strings.length(pieces[0]) + len(EXIF_HEADER), tf.strings.length(encoded))
    tiff = tf.strings.substr(encoded, start, 65536)
    raw = tf.cast(tf.io.decode_raw(tiff, tf.uint8), tf.int64)
    room = 8 + 2 + MAX_ENTRIES * _ENTRY_BYTES
    data = tf.pad(raw, [[0, room]])  # reads past the end see zeros
    little = tf.strings.substr(tiff, 0, 2) == b"II"
    found &= little | (tf.strings.substr(tiff, 0, 2) == b"MM")
    ifd = tf.minimum(_unsigned(data, tf.constant(4, tf.int64), 4, little), tf.size(raw, tf.int64))
    count = _unsigned(data, ifd, 2, little)
    entries = ifd + 2 + _ENTRY_BYTES * tf.range(MAX_ENTRIES, dtype=tf.int64)
    tags = _unsigned(data, entries, 2, little)
    types = _unsigned(data, entries + 2, 2, little)
    values = _unsigned(data, entries + 8, 2, little)
    listed = tf.range(MAX_ENTRIES, dtype=tf.int64) < count
    hit = (tags == EXIF_ORIENTATION) & (types == _SHORT) & listed
    value = tf.reduce_sum(tf.where(hit & (tf.cumsum(tf.cast(hit, tf.int64)) == 1), values, 0))
    valid = found & tf.reduce_any(hit) & (value >= 1) & (value <= 8)
    return tf.cast(tf.where(valid, value, 1), tf.int32)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """(H, W, C) stored pixels turned as EXIF `orientation` says (as `PIL.ImageOps.exif_transpose`)."""
    transposed = tf.transpose(image, [1, 0, 2])
    turns = [
        lambda: image,  # 1: upright
        lambda: tf.reverse(image, [1]),  # 2: mirrored left-right
        lambda: tf.reverse(image, [0, 1]),  # 3: turned 180 degrees
        lambda: tf.reverse(image, [0]),  # 4: mirrored top-bottom
        lambda: transposed,  # 5: transposed
        lambda: tf.reverse(transposed, [1]),  # 6: turned 90 degrees clockwise for display
        lambda: tf.reverse(transposed, [0, 1]),  # 7: transverse
        lambda: tf.reverse(transposed, [0]),  # 8: turned 90 degrees counter-clockwise
    ]
    return tf.switch_case(orientation - 1, turns)
