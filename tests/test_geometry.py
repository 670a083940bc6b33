"""Pure box, mask and homography geometry of the input pipeline, each against a direct computation."""

import math

import numpy as np
import pytest
import tensorflow as tf

from sdjax import geometry


def test_box_measures():
    boxes = tf.constant([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 1.0, 3.0]])
    np.testing.assert_allclose(geometry.box_area(boxes), [8.0, 0.0])
    np.testing.assert_allclose(geometry.box_aspect(boxes), [2.0, 0.0])
    assert np.isinf(geometry.box_aspect(tf.constant([[0.0, 1.0, 2.0, 1.0]]))[0])


def test_boxes_inside():
    boxes = tf.constant(
        [
            [0.0, 0.0, 8.0, 6.0],  # the whole image
            [2.0, 1.0, 2.0, 3.0],  # zero width
            [-0.5, 1.0, 3.0, 3.0],  # leaves on the left
            [1.0, 1.0, 3.0, 6.5],  # leaves at the bottom
        ]
    )
    assert geometry.boxes_inside(boxes, 8, 6).numpy().tolist() == [True, False, False, False]


def test_overlap_over_smaller_and_greedy_selection():
    boxes = tf.constant(
        [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 5.0, 5.0],  # inside the first: overlap 1
            [8.0, 8.0, 18.0, 18.0],  # 4 of its 100 px overlap the first
            [9.0, 9.0, 17.0, 17.0],  # inside the third
        ]
    )
    overlap = geometry.overlap_over_smaller(boxes).numpy()
    assert overlap[0, 1] == overlap[1, 0] == 1.0
    np.testing.assert_allclose(overlap[0, 2], 4.0 / 100.0)
    np.testing.assert_allclose(overlap[0, 3], 1.0 / 64.0)
    everyone = tf.constant([True, True, True, True])
    kept = geometry.greedy_non_overlapping(everyone, overlap, 0.8).numpy()
    assert kept.tolist() == [True, False, True, False]
    # A box that is no candidate blocks nothing.
    kept = geometry.greedy_non_overlapping(tf.constant([False, True, False, True]), overlap, 0.8)
    assert kept.numpy().tolist() == [False, True, False, True]
    assert geometry.first_k(everyone, 3).numpy().tolist() == [True, True, True, False]


def test_mask_pixels_in_boxes_truncates_like_slicing():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 13, 17)) > 0.5
    boxes = np.stack(
        [
            rng.uniform(0, 8, 5),
            rng.uniform(0, 6, 5),
            rng.uniform(8, 17, 5),
            rng.uniform(6, 13, 5),
        ],
        axis=1,
    ).astype(np.float32)
    expected = [
        masks[i, int(b[1]) : int(b[3]), int(b[0]) : int(b[2])].sum() for i, b in enumerate(boxes)
    ]
    got = geometry.mask_pixels_in_boxes(tf.constant(masks), tf.constant(boxes))
    assert got.numpy().tolist() == expected


@pytest.mark.parametrize(
    ("width", "height", "box", "u", "expected"),
    [
        (100, 60, [30.0, 5.0, 70.0, 50.0], [0.0, 0.5], (10, 0, True)),  # leftmost that fits
        (100, 60, [30.0, 5.0, 70.0, 50.0], [0.999, 0.5], (30, 0, True)),  # rightmost
        (100, 60, [30.2, 5.0, 69.5, 50.0], [0.999, 0.5], (30, 0, True)),  # floor/ceil the box
        (60, 100, [5.0, 30.0, 50.0, 70.0], [0.5, 0.999], (0, 30, True)),  # portrait
        (100, 60, [5.0, 5.0, 95.0, 50.0], [0.3, 0.3], (20, 0, False)),  # too wide: centred
    ],
)
def test_square_crop_containing(width, height, box, u, expected):
    x, y, side, contained = geometry.square_crop_containing(
        width, height, tf.constant([box]), tf.constant([True]), tf.constant(u)
    )
    assert (int(x), int(y), bool(contained)) == expected
    assert int(side) == min(width, height)


def test_square_crop_draws_every_offset_that_contains_the_boxes():
    boxes = tf.constant([[30.0, 5.0, 45.0, 20.0], [52.0, 40.0, 60.0, 58.0], [0.0, 0.0, 99.0, 59.0]])
    valid = tf.constant([True, True, False])  # the invalid box would not fit
    offsets = set()
    for u in np.linspace(0.0, 0.999, 50):
        x, y, side, contained = geometry.square_crop_containing(
            100, 60, boxes, valid, tf.constant([u, u], tf.float32)
        )
        assert bool(contained) and int(y) == 0 and int(side) == 60
        offsets.add(int(x))
    assert offsets == set(range(0, 31))  # x in [60 - 60, 30]
    cropped = geometry.crop_boxes(boxes[:2], 10, 0, 60).numpy()
    np.testing.assert_allclose(cropped[0], [20 / 60, 5 / 60, 35 / 60, 20 / 60], rtol=1e-6)


def test_crop_boxes_clips_to_the_crop():
    got = geometry.crop_boxes(tf.constant([[-10.0, 5.0, 30.0, 70.0]]), 0, 0, 50)
    np.testing.assert_allclose(got.numpy(), [[0.0, 0.1, 0.6, 1.0]])


def test_background_of_boxes_is_zero_exactly_at_cell_centres_inside():
    boxes = tf.constant([[0.1, 0.2, 0.5, 0.45], [0.0, 0.0, 1.0, 1.0]])
    valid = tf.constant([True, False])
    background = geometry.background_of_boxes(boxes, valid, 8).numpy()
    centres = (np.arange(8) + 0.5) / 8
    inside_x = (centres >= 0.1) & (centres <= 0.5)
    inside_y = (centres >= 0.2) & (centres <= 0.45)
    expected = 1.0 - np.outer(inside_y, inside_x)
    np.testing.assert_array_equal(background, expected)


def test_fill_holes_fills_a_ring_and_keeps_the_outside():
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    filled = geometry.fill_holes(tf.constant(ring)).numpy()
    expected = np.zeros((7, 7), bool)
    expected[1:6, 1:6] = True
    np.testing.assert_array_equal(filled, expected)
    # An L shape: its concave corner is not spanned in both directions, so it stays empty.
    ell = np.zeros((5, 5), bool)
    ell[0:5, 0] = True
    ell[4, 0:5] = True
    np.testing.assert_array_equal(geometry.fill_holes(tf.constant(ell)).numpy(), ell)


def test_homographies_map_points_as_defined():
    points = tf.constant([[1.0, 2.0], [3.0, -1.0]])
    np.testing.assert_allclose(
        geometry.apply_homography(geometry.translation(2.0, 3.0), points), [[3, 5], [5, 2]]
    )
    np.testing.assert_allclose(
        geometry.apply_homography(geometry.scaling(2.0, 0.5), points), [[2, 1], [6, -0.5]]
    )
    quarter = geometry.rotation(math.pi / 2, 1.0, 1.0)
    np.testing.assert_allclose(
        geometry.apply_homography(quarter, tf.constant([[2.0, 1.0]])), [[1.0, 2.0]], atol=1e-6
    )
    flip = geometry.horizontal_flip(tf.constant([True, False]), 10.0)
    np.testing.assert_allclose(
        geometry.apply_homography(flip, tf.constant([[[3.0, 4.0]], [[3.0, 4.0]]])),
        [[[7.0, 4.0]], [[3.0, 4.0]]],
    )
    src = tf.constant([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    dst = tf.constant([[1.0, 2.0], [8.0, 1.0], [9.0, 9.0], [2.0, 7.0]])
    warp = geometry.homography_from_points(src, dst)
    np.testing.assert_allclose(geometry.apply_homography(warp, src), dst, atol=1e-4)


def test_warp_images_follows_the_continuous_pixel_convention():
    image = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])
    identity = geometry.warp_images(image, tf.eye(3)[None], 4)
    np.testing.assert_allclose(identity, image)
    # Output point p reads input point p + (1, 0): one pixel to the right.
    shifted = geometry.warp_images(image, geometry.translation(1.0, 0.0)[None], 4, fill=-1.0)
    np.testing.assert_allclose(shifted[0, :, :3, 0], image[0, :, 1:, 0])
    np.testing.assert_allclose(shifted[0, :, 3, 0], -1.0)
    # Downscale 4 -> 2: output pixel centre (0.5, 0.5) reads input point (1, 1), a corner shared
    # by four pixels, so bilinear sampling averages them.
    half = geometry.warp_images(image, geometry.scaling(2.0, 2.0)[None], 2)
    np.testing.assert_allclose(half[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
