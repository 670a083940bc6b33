"""Box, mask and homography geometry of the input pipeline, as pure TensorFlow functions.

Conventions: boxes are `(x0, y0, x1, y1)` in continuous pixel coordinates, where pixel `(i, j)`
covers `[j, j + 1) x [i, i + 1)` and its centre is at `(j + 0.5, i + 0.5)`; normalised boxes divide
those by the image size. Homographies are 3x3 matrices acting on column vectors `(x, y, 1)` in the
same continuous coordinates, and a "sampling map" sends an output point to the input point it reads.
"""

from __future__ import annotations

import functools

import tensorflow as tf


def box_size(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Width and height of (..., 4) boxes."""
    return boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]


def box_area(boxes: tf.Tensor) -> tf.Tensor:
    """Area of (..., 4) boxes."""
    width, height = box_size(boxes)
    return width * height


def box_aspect(boxes: tf.Tensor) -> tf.Tensor:
    """Width over height of (..., 4) boxes (inf for a zero height)."""
    width, height = box_size(boxes)
    return tf.where(height > 0, tf.math.divide_no_nan(width, height), float("inf"))


def boxes_inside(boxes: tf.Tensor, width: tf.Tensor, height: tf.Tensor) -> tf.Tensor:
    """Whether each (N, 4) box has positive area and lies inside a `width` x `height` image."""
    width = tf.cast(width, boxes.dtype)
    height = tf.cast(height, boxes.dtype)
    x0, y0, x1, y1 = tf.unstack(boxes, axis=-1)
    return (x0 >= 0) & (x0 < x1) & (x1 <= width) & (y0 >= 0) & (y0 < y1) & (y1 <= height)


def overlap_over_smaller(boxes: tf.Tensor) -> tf.Tensor:
    """(N, N) intersection area of each pair of (N, 4) boxes over the smaller of their areas."""
    a = boxes[:, None, :]
    b = boxes[None, :, :]
    width = tf.nn.relu(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]))
    height = tf.nn.relu(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]))
    area = box_area(boxes)
    smaller = tf.minimum(area[:, None], area[None, :])
    return tf.math.divide_no_nan(width * height, smaller)


def greedy_non_overlapping(
    candidates: tf.Tensor, overlap: tf.Tensor, max_overlap: float
) -> tf.Tensor:
    """Walk the (N,) candidates in order; keep one unless it overlaps a kept one by > max_overlap.

    overlap: (N, N) pairwise overlap (e.g. `overlap_over_smaller`). Returns the (N,) kept mask.
    """
    clash = overlap > max_overlap
    count = tf.shape(candidates)[0]

    def step(i, kept):
        earlier = tf.range(count) < i
        blocked = tf.reduce_any(kept & earlier & clash[i])
        keep_i = candidates[i] & ~blocked
        return i + 1, tf.tensor_scatter_nd_update(kept, [[i]], [keep_i])

    _, kept = tf.while_loop(
        lambda i, _: i < count, step, (tf.constant(0), tf.zeros_like(candidates))
    )
    return kept


def first_k(mask: tf.Tensor, k: int) -> tf.Tensor:
    """The (N,) mask with only its first `k` true entries left true."""
    return mask & (tf.cumsum(tf.cast(mask, tf.int32)) <= k)


def index_span(length, start: tf.Tensor, stop: tf.Tensor, dtype) -> tf.Tensor:
    """(N, length) float32: 1 where `start[n] <= index < stop[n]` (integer-valued bounds)."""
    index = tf.range(length, dtype=dtype)
    return tf.cast((index >= start[:, None]) & (index < stop[:, None]), tf.float32)


def mask_pixels_in_boxes(masks: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """(N,) count of nonzero pixels of each (N, H, W) mask inside its own box.

    The box is taken on the integer grid as rows `int(y0):int(y1)`, columns `int(x0):int(x1)`
    (coordinates truncated, as the reference's tensor slicing does). Counted as a float32
    row-mask-column product: exact below 2**24 pixels.
    """
    inside = tf.cast(tf.cast(masks, tf.bool), tf.float32)
    corners = tf.floor(boxes)
    rows = index_span(tf.shape(masks)[1], corners[:, 1], corners[:, 3], boxes.dtype)
    columns = index_span(tf.shape(masks)[2], corners[:, 0], corners[:, 2], boxes.dtype)
    return tf.cast(tf.einsum("nh,nhw,nw->n", rows, inside, columns), tf.int32)


def square_crop_containing(
    width: tf.Tensor, height: tf.Tensor, boxes: tf.Tensor, valid: tf.Tensor, u: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Largest square crop `(x, y, side)` of the image containing every valid (N, 4) box.

    The square's side is the image's shorter side; its offset along the longer side is drawn
    uniformly among the integer offsets that contain the boxes, from `u` (2,) in [0, 1). When no
    such offset exists the crop is centred. With no valid box any offset qualifies. Returns int32
    `x, y, side` and `contained` (bool).
    """
    width = tf.cast(width, tf.int32)
    height = tf.cast(height, tf.int32)
    side = tf.minimum(width, height)
    size = tf.stack([width, height])
    lo_corner = tf.reduce_min(
        tf.where(valid[:, None], boxes[:, :2], tf.cast(size, boxes.dtype)), axis=0
    )
    hi_corner = tf.reduce_max(tf.where(valid[:, None], boxes[:, 2:], 0.0), axis=0)
    first = tf.maximum(0, tf.cast(tf.math.ceil(hi_corner), tf.int32) - side)
    last = tf.minimum(tf.cast(tf.floor(lo_corner), tf.int32), size - side)
    contained = tf.reduce_all(first <= last)
    span = tf.cast(last - first + 1, tf.float32)
    drawn = first + tf.minimum(tf.cast(tf.floor(u * span), tf.int32), last - first)
    centred = (size - side) // 2
    offset = tf.where(contained, drawn, centred)
    return offset[0], offset[1], side, contained


def crop_boxes(boxes: tf.Tensor, x: tf.Tensor, y: tf.Tensor, side: tf.Tensor) -> tf.Tensor:
    """(..., 4) pixel boxes in the square crop `(x, y, side)`, normalised to [0, 1] and clipped."""
    origin = tf.cast(tf.stack([x, y, x, y]), boxes.dtype)
    return tf.clip_by_value((boxes - origin) / tf.cast(side, boxes.dtype), 0.0, 1.0)


def cell_centres(size: int) -> tf.Tensor:
    """(size,) normalised centres of the cells of a `size`-long axis."""
    return (tf.range(size, dtype=tf.float32) + 0.5) / size


def nearest_indices(length: tf.Tensor, size: int) -> tf.Tensor:
    """(size,) source index each cell of a `size`-long axis reads when resampling a `length`-long
    one by nearest neighbour: the pixel under the cell centre."""
    length = tf.cast(length, tf.float32)
    index = tf.floor(cell_centres(size) * length)
    return tf.cast(tf.minimum(index, length - 1), tf.int32)


def box_regions(boxes: tf.Tensor, size: int) -> tf.Tensor:
    """(..., size, size) bool: which cells of a `size` x `size` grid have their centre in each box.

    boxes: (..., 4) normalised. A centre on the box edge counts as inside.
    """
    centres = cell_centres(size)
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
    in_x = (x0 <= centres) & (centres <= x1)
    in_y = (y0 <= centres) & (centres <= y1)
    return in_y[..., :, None] & in_x[..., None, :]


def background_of_boxes(boxes: tf.Tensor, valid: tf.Tensor, size: int) -> tf.Tensor:
    """(size, size) float: 0 on cells inside any valid (N, 4) normalised box, 1 elsewhere."""
    inside = box_regions(boxes, size) & valid[:, None, None]
    return 1.0 - tf.cast(tf.reduce_any(inside, axis=0), tf.float32)


def fill_holes(masks: tf.Tensor) -> tf.Tensor:
    """Fill (..., H, W) masks: a pixel is set when its row and its column both hold mask pixels
    on each side of it (itself included), the reference's fast cavity filling."""
    inside = tf.cast(masks, tf.bool)
    height, width = tf.shape(inside)[-2], tf.shape(inside)[-1]

    def spanned(index, axis, length):
        first = tf.reduce_min(tf.where(inside, index, length), axis=axis, keepdims=True)
        last = tf.reduce_max(tf.where(inside, index, -1), axis=axis, keepdims=True)
        return (index >= first) & (index <= last)

    return spanned(tf.range(width), -1, width) & spanned(tf.range(height)[:, None], -2, height)


def _matrix(rows) -> tf.Tensor:
    """(..., 3, 3) matrices from 3 rows of 3 broadcastable (...) entries."""
    entries = [tf.convert_to_tensor(v, tf.float32) for row in rows for v in row]
    shape = functools.reduce(tf.broadcast_dynamic_shape, [tf.shape(e) for e in entries])
    flat = tf.stack([tf.broadcast_to(e, shape) for e in entries], axis=-1)
    return tf.reshape(flat, tf.concat([shape, [3, 3]], axis=0))


def translation(tx: tf.Tensor, ty: tf.Tensor) -> tf.Tensor:
    """(..., 3, 3) homography `p -> p + (tx, ty)`."""
    return _matrix([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def scaling(sx: tf.Tensor, sy: tf.Tensor) -> tf.Tensor:
    """(..., 3, 3) homography `(x, y) -> (sx x, sy y)`."""
    return _matrix([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def rotation(angle: tf.Tensor, cx: tf.Tensor, cy: tf.Tensor) -> tf.Tensor:
    """(..., 3, 3) rotation by `angle` radians about `(cx, cy)`."""
    angle = tf.convert_to_tensor(angle, tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    turn = _matrix([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return translation(cx, cy) @ turn @ translation(-cx, -cy)


def horizontal_flip(flip: tf.Tensor, width: float) -> tf.Tensor:
    """(..., 3, 3) mirror `x -> width - x` where `flip`, identity elsewhere."""
    sign = tf.where(flip, -1.0, 1.0)
    shift = tf.where(flip, float(width), 0.0)
    return _matrix([[sign, 0.0, shift], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def homography_from_points(src: tf.Tensor, dst: tf.Tensor) -> tf.Tensor:
    """(..., 3, 3) homography sending the four (..., 4, 2) `src` points to the `dst` points."""
    src = tf.convert_to_tensor(src, tf.float32)
    dst = tf.convert_to_tensor(dst, tf.float32)
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = tf.ones_like(x), tf.zeros_like(x)
    # u (g x + h y + 1) = a x + b y + c; v (g x + h y + 1) = d x + e y + f.
    rows_u = tf.stack([x, y, one, zero, zero, zero, -u * x, -u * y], axis=-1)
    rows_v = tf.stack([zero, zero, zero, x, y, one, -v * x, -v * y], axis=-1)
    system = tf.concat([rows_u, rows_v], axis=-2)
    rhs = tf.concat([u, v], axis=-1)[..., None]
    coefficients = tf.linalg.solve(system, rhs)[..., 0]
    flat = tf.concat([coefficients, tf.ones_like(coefficients[..., :1])], axis=-1)
    return tf.reshape(flat, tf.concat([tf.shape(flat)[:-1], [3, 3]], axis=0))


def projective_transform_params(sampling: tf.Tensor) -> tf.Tensor:
    """(..., 8) parameters of `ImageProjectiveTransformV3` for a continuous sampling map.

    That op reads output pixel index `(j, i)` at input index coordinates, where pixel centres sit
    on integers: shift by half a pixel on both sides.
    """
    to_index = translation(-0.5, -0.5) @ sampling @ translation(0.5, 0.5)
    to_index = to_index / to_index[..., 2:3, 2:3]
    flat = tf.reshape(to_index, tf.concat([tf.shape(to_index)[:-2], [9]], axis=0))
    return flat[..., :8]


def warp_images(images: tf.Tensor, sampling: tf.Tensor, size: int, fill: float = 0.0) -> tf.Tensor:
    """Resample (B, H, W, C) float images by (B, 3, 3) sampling maps into (B, size, size, C).

    Bilinear; points outside the input read `fill`.
    """
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=projective_transform_params(sampling),
        output_shape=tf.constant([size, size], tf.int32),
        fill_value=tf.constant(fill, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def apply_homography(matrix: tf.Tensor, points: tf.Tensor) -> tf.Tensor:
    """Map (..., P, 2) points by (..., 3, 3) homographies."""
    homogeneous = tf.concat([points, tf.ones_like(points[..., :1])], axis=-1)
    mapped = tf.linalg.matmul(homogeneous, matrix, transpose_b=True)
    return mapped[..., :2] / mapped[..., 2:3]
