"""Affine geometry: the crop transform, its inverse, and mapping heatmap points back.

The crop sends a box of ``scale * 200`` pixels centred at ``center`` onto an
``output_size = (width, height)`` window: the box centre lands on the window
centre and the box width spans the window width, in both axes (a similarity).
Expected matrices below are worked out by hand from that statement.
"""

import chex
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax.transforms import affine_transform, get_affine_transform, transform_preds


def test_unit_scale_into_200x200_window_is_a_translation():
    # x' = x - 100 + 100, y' = y - 50 + 100.
    m = get_affine_transform(np.array([100.0, 50.0]), np.array([1.0, 1.0]), 0, (200, 200))
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 50]], atol=1e-12)


def test_box_width_spans_window_width_with_the_same_factor_on_both_axes():
    # Box 400 x 600 px onto 100 x 200: factor 100 / 400 = 0.25 for x and for y.
    # x' = 0.25 (x - 300) + 50, y' = 0.25 (y - 200) + 100.
    m = get_affine_transform(np.array([300.0, 200.0]), np.array([2.0, 3.0]), 0, (100, 200))
    np.testing.assert_allclose(m, [[0.25, 0, -25], [0, 0.25, 50]], atol=1e-12)


def test_inverse_maps_the_window_back_to_the_image():
    # Inverting x' = 0.25 x - 25, y' = 0.25 y + 50 gives x = 4 x' + 100, y = 4 y' - 200.
    m = get_affine_transform(np.array([300.0, 200.0]), np.array([2.0, 3.0]), 0, (100, 200),
                             inv=True)
    np.testing.assert_allclose(m, [[4, 0, 100], [0, 4, -200]], atol=1e-10)


def test_shift_moves_the_box_centre_by_a_fraction_of_the_box_size():
    # Box centre (300 + 0.1 * 400, 200 - 0.2 * 600) = (340, 80).
    m = get_affine_transform(np.array([300.0, 200.0]), np.array([2.0, 3.0]), 0, (100, 200),
                             shift=(0.1, -0.2))
    np.testing.assert_allclose(m, [[0.25, 0, -35], [0, 0.25, 80]], atol=1e-10)


def test_rotation_by_90_degrees_sends_the_image_x_axis_to_the_window_minus_y_axis():
    # Points: centre (50, 80) -> (100, 100); the box's "up" point turned by 90
    # degrees, (150, 80), -> the window's top middle (100, 0). So A (1, 0) = (0, -1),
    # A (0, 1) = (1, 0), and t = (100, 100) - A (50, 80) = (20, 150).
    m = get_affine_transform(np.array([50.0, 80.0]), np.array([1.0, 1.0]), 90, (200, 200))
    np.testing.assert_allclose(m, [[0, 1, 20], [-1, 0, 150]], atol=1e-9)


def test_scalar_scale_means_the_same_scale_on_both_axes():
    center = np.array([321.0, 123.0])
    np.testing.assert_array_equal(get_affine_transform(center, 1.5, 10, (64, 64)),
                                  get_affine_transform(center, np.array([1.5, 1.5]), 10, (64, 64)))


def test_numpy_inputs_give_a_float64_numpy_matrix_for_cv2_warp_affine():
    m = get_affine_transform(np.array([10.0, 20.0]), np.array([1.0, 1.0]), 0, (64, 48))
    assert isinstance(m, np.ndarray)
    assert m.dtype == np.float64 and m.shape == (2, 3)


def _reference_points(center, scale, rot, size):
    """The stated construction: centre, half a box width 'up' turned by rot, a right angle."""
    w = scale[0] * 200.0
    a = np.deg2rad(rot)
    up = np.array([0.5 * w * np.sin(a), -0.5 * w * np.cos(a)])
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + up
    dst[0], dst[1] = (size[0] / 2, size[1] / 2), (size[0] / 2, size[1] / 2 - size[0] / 2)
    for pts in (src, dst):
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], np.float32)
    return src, dst


@pytest.mark.parametrize("rot", [0.0, 30.0, -17.5])
@pytest.mark.parametrize("inv", [False, True])
def test_numpy_path_is_cv2_get_affine_transform_on_float32_three_points_to_the_bit(rot, inv):
    # Bit for bit: another exact solver differs in the last bit now and then, which
    # decides float32 rounding ties of mapped points the other way.
    center, scale, size = np.array([612.7, 385.3]), np.array([3.21, 4.0]), (256, 256)
    src, dst = _reference_points(center, scale, rot, size)
    want = cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)
    got = get_affine_transform(center, scale, rot, size, inv=inv)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_jitted_batched_jax_path_agrees_with_numpy_path():
    centers = np.array([[612.5, 385.25], [100.0, 900.5]])
    scales = np.array([[3.25, 4.0], [1.5, 2.0]])
    rots = np.array([0.0, 25.0])
    fn = jax.jit(lambda c, s, r: get_affine_transform(c, s, r, (64, 64), inv=True))
    got = fn(jnp.asarray(centers), jnp.asarray(scales), jnp.asarray(rots))
    chex.assert_shape(got, (2, 2, 3))
    for n in range(2):
        want = get_affine_transform(centers[n], scales[n], rots[n], (64, 64), inv=True)
        np.testing.assert_allclose(np.asarray(got[n]), want, rtol=1e-5, atol=1e-3)


def test_affine_transform_applies_the_matrix_to_one_or_many_points():
    t = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_allclose(affine_transform(np.array([1.0, 1.0]), t), [6, 15])
    np.testing.assert_allclose(affine_transform(np.array([[1.0, 1.0], [0.0, 2.0]]), t),
                               [[6, 15], [7, 16]])


def test_transform_preds_maps_heatmap_points_back_to_image_pixels():
    # Box 256 px onto a 64 x 64 heatmap: factor 4 around the centre (32, 32).
    center, scale = np.array([100.0, 200.0]), np.array([1.28, 1.28])
    coords = np.array([[32.0, 32.0], [0.0, 0.0], [10.0, 40.0]])
    want = [[100, 200], [100 - 128, 200 - 128], [100 - 88, 200 + 32]]
    np.testing.assert_allclose(transform_preds(coords, center, scale, (64, 64)), want, atol=1e-9)
    batched = jax.jit(lambda c, ce, s: transform_preds(c, ce, s, (64, 64)))(
        jnp.asarray(coords[None]), jnp.asarray(center[None]), jnp.asarray(scale[None]))
    chex.assert_shape(batched, (1, 3, 2))
    np.testing.assert_allclose(np.asarray(batched[0]), want, atol=1e-4)


def test_center_that_is_not_xy_raises_naming_the_expected_shape():
    with pytest.raises(ValueError, match=r"center: expected shape \(\.\.\., 2\)"):
        get_affine_transform(np.array([1.0, 2.0, 3.0]), 1.0, 0, (64, 64))


def test_scale_of_the_wrong_shape_raises():
    with pytest.raises(ValueError, match="scale: expected shape"):
        get_affine_transform(np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0]), 0, (64, 64))


def test_transform_preds_with_mismatched_center_raises():
    with pytest.raises(ValueError, match=r"center: expected shape \(2, 2\)"):
        transform_preds(np.zeros((2, 5, 2)), np.zeros((3, 2)), np.ones((3, 2)), (64, 64))


def test_float32_scale_makes_a_float32_box_size_as_the_reference():
    # float32 0.3 times 200 in float32 is 60 + 2^-18 (float64 would keep 60.0000024).
    # Centre (0, 31): the point half a box above it is at y = 31 - (30 + 2^-19) =
    # 1 - 2^-19, and the output's corner (0, 0) maps back to the third point,
    # (0 - (30 + 2^-19), 1 - 2^-19).
    trans = get_affine_transform(np.array([0.0, 31.0], np.float32),
                                 np.array([0.3, 0.3], np.float32), 0, (60, 60), inv=True)
    corner = affine_transform(np.array([0.0, 0.0]), trans)
    np.testing.assert_allclose(corner, [-(30 + 2**-19), 1 - 2**-19], rtol=0, atol=1e-12)
