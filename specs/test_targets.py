"""Gaussian heatmap targets.

Rules (reference semantics): stride = image_size / heatmap_size per axis;
mu = int(joint / stride + 0.5) with int truncating toward zero; window
[int(mu - 3 sigma), int(mu + 3 sigma + 1)); a window entirely off the map
(ul >= size or br < 0) zeroes the weight; the Gaussian
exp(-((x - cx)^2 + (y - cy)^2) / (2 sigma^2)) is written inside the window,
clipped to the map, only when the weight is above 0.5; the weight is
joints_vis column 0. Expected maps are written from the formula by hand.
"""

import math
import os
import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from hrnet_jax.targets import generate_target, generate_target_np, generate_targets

# A 32 x 32 input with an 8 x 8 heatmap: stride 4 on both axes.
SMALL = dict(image_size=(32, 32), heatmap_size=(8, 8))


def gauss(dx, dy, sigma):
    return math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))


def both(joints, vis, **kw):
    """Results of the NumPy and the jitted JAX entry points."""
    joints, vis = np.asarray(joints, float), np.asarray(vis, float)
    a = generate_target_np(joints, vis, **kw)
    b = generate_target(joints, vis, **kw)
    return [(np.asarray(t), np.asarray(w)) for t, w in (a, b)]


def test_one_joint_8x8_sigma_1_is_the_gaussian_on_its_window():
    # Joint (12, 8) px -> mu = (int(3.5), int(2.5)) = (3, 2); window x in [0, 7), y in [-1, 6).
    expected = np.zeros((1, 8, 8), np.float32)
    for y in range(0, 6):
        for x in range(0, 7):
            expected[0, y, x] = gauss(x - 3, y - 2, 1.0)
    for target, weight in both([[12.0, 8.0]], [1.0], sigma=1, **SMALL):
        np.testing.assert_allclose(target, expected, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(weight, [[1.0]])
        assert target[0, 2, 3] == 1.0
        assert target[0, 2, 7] == 0.0  # exp(-8) would be there, but x = 7 is outside the window
        assert target[0, 6, 3] == 0.0


def test_gaussian_values_are_float32_numpy_exp_of_the_integer_offsets_to_the_bit():
    # Joint (64, 64) px at stride 4 -> mu = (16, 16); sigma 2 -> a 13 x 13 window from
    # 10 to 22 on both axes. The reference evaluates exp(-(dx^2 + dy^2) / 8) with
    # NumPy on a float32 array of the window's offsets; the same bits must come out.
    offsets = np.arange(-6, 7, dtype=np.float32)
    expected = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / np.float32(8.0))
    for target, _ in both([[64.0, 64.0]], [1.0], image_size=(256, 256), heatmap_size=(64, 64),
                          sigma=2):
        np.testing.assert_array_equal(target[0, 10:23, 10:23], expected)
        assert not target[0, 9].any() and not target[0, :, 23].any()


def test_mu_is_joint_over_stride_rounded_half_up():
    # 10 / 4 + 0.5 = 3.0 -> 3; 9.9 / 4 + 0.5 = 2.975 -> 2.
    for target, _ in both([[10.0, 9.9]], [1.0], sigma=1, **SMALL):
        assert np.unravel_index(np.argmax(target[0]), (8, 8)) == (2, 3)  # (row y, column x)


def test_mu_of_a_joint_a_hair_short_of_a_half_stride_is_decided_in_float64():
    # x = 10 - 1e-12: 2.49999999999975 + 0.5 -> 2 in float64, as the reference computes.
    # (float32 would round the joint to 10.0 and give 3.)
    joints = np.array([[10.0 - 1e-12, 16.0]])
    for target, _ in both(joints, [1.0], sigma=1, **SMALL):
        assert np.unravel_index(np.argmax(target[0]), (8, 8)) == (4, 2)  # (row y, column x)
    batched, _ = generate_targets(joints[None], np.ones((1, 1)), sigma=1, **SMALL)
    assert np.unravel_index(np.argmax(np.asarray(batched)[0, 0]), (8, 8)) == (4, 2)


def test_negative_coordinates_truncate_toward_zero():
    # x = -3: -0.75 + 0.5 = -0.25 -> int() gives 0 (floor would give -1): peak on column 0.
    # x = -7: -1.75 + 0.5 = -1.25 -> -1: the peak is off the map, column 0 holds exp(-1/2).
    for target, weight in both([[-3.0, 16.0], [-7.0, 16.0]], [1.0, 1.0], sigma=1, **SMALL):
        assert target[0, 4, 0] == 1.0
        np.testing.assert_allclose(target[1, 4, 0], gauss(1, 0, 1.0), rtol=1e-6)
        np.testing.assert_array_equal(weight, [[1.0], [1.0]])


def test_joint_outside_heatmap_gets_zero_weight():
    # sigma 1: mu_x = 11 gives ul_x = 8 >= 8; mu_x = -5 gives br_x = int(-1) = -1 < 0.
    # x = 44 -> mu 11; x = -22 -> int(-5.5 + 0.5) = -5; y = 60 -> mu_y 15, ul_y = 12 >= 8.
    joints = [[44.0, 16.0], [-22.0, 16.0], [16.0, 60.0]]
    for target, weight in both(joints, [1.0, 1.0, 1.0], sigma=1, **SMALL):
        np.testing.assert_array_equal(weight, np.zeros((3, 1)))
        assert not target.any()


def test_joint_just_inside_the_right_border_draws_only_its_tail():
    # mu_x = 10: ul_x = 7 < 8, so the joint keeps weight 1 and column 7 holds exp(-9 / 2).
    for target, weight in both([[40.0, 16.0]], [1.0], sigma=1, **SMALL):
        np.testing.assert_array_equal(weight, [[1.0]])
        np.testing.assert_allclose(target[0, 4, 7], gauss(3, 0, 1.0), rtol=1e-6)
        assert not target[0, :, :7].any()


def test_window_ending_exactly_at_the_left_border_keeps_weight_but_draws_nothing():
    # x = -18: int(-4.5 + 0.5) = -4; br_x = int(-4 + 3 + 1) = 0, which is not < 0.
    for target, weight in both([[-18.0, 16.0]], [1.0], sigma=1, **SMALL):
        np.testing.assert_array_equal(weight, [[1.0]])
        assert not target.any()


def test_invisible_joint_gets_zero_weight_and_an_empty_map():
    for target, weight in both([[16.0, 16.0]], [0.0], sigma=1, **SMALL):
        np.testing.assert_array_equal(weight, [[0.0]])
        assert not target.any()


def test_map_is_written_only_when_the_weight_exceeds_one_half():
    for target, weight in both([[16.0, 16.0], [16.0, 16.0]], [0.5, 0.6], sigma=1, **SMALL):
        np.testing.assert_allclose(weight, [[0.5], [0.6]])
        assert not target[0].any()
        assert target[1, 4, 4] == 1.0


def test_target_weight_is_column_0_of_joints_vis():
    vis = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    joints = np.array([[16.0, 16.0, 0.0], [16.0, 16.0, 0.0]])  # a third column is ignored
    for target, weight in both(joints, vis, sigma=1, **SMALL):
        np.testing.assert_array_equal(weight, [[1.0], [0.0]])
        assert target[0, 4, 4] == 1.0 and not target[1].any()


def test_non_integer_three_sigma_puts_the_peak_at_window_corner_plus_half_size():
    # sigma 0.5: 3 sigma = 1.5, window size 4, peak at ul + 4 // 2 = ul + 2.
    # x = 0: mu_x = 0, ul_x = int(-1.5) = -1, br_x = int(2.5) = 2 -> peak on column 1, not 0.
    # y = 12: mu_y = int(3.5) = 3, ul_y = int(1.5) = 1, br_y = int(5.5) = 5 -> peak on row 3.
    expected = np.zeros((8, 8), np.float32)
    for y in range(1, 5):
        for x in range(0, 2):
            expected[y, x] = gauss(x - 1, y - 3, 0.5)
    for target, _ in both([[0.0, 12.0]], [1.0], sigma=0.5, **SMALL):
        np.testing.assert_allclose(target[0], expected, rtol=1e-6, atol=0)
        assert target[0, 3, 1] == 1.0


def test_sizes_are_width_height_and_each_axis_uses_its_own_stride():
    # Input 64 x 64, heatmap width 16, height 8: strides (4, 8); maps are (J, 8, 16).
    # Joint (20, 20): mu = (int(5.5), int(3.0)) = (5, 3).
    kw = dict(image_size=(64, 64), heatmap_size=(16, 8), sigma=1)
    for target, _ in both([[20.0, 20.0]], [1.0], **kw):
        assert target.shape == (1, 8, 16)
        assert target[0, 3, 5] == 1.0


def test_generate_targets_maps_48x16_joints_to_48x16x64x64_and_48x16x1():
    joints = jax.ShapeDtypeStruct((48, 16, 3), np.float32)
    vis = jax.ShapeDtypeStruct((48, 16, 3), np.float32)
    target, weight = jax.eval_shape(
        lambda j, v: generate_targets(j, v, image_size=(256, 256), heatmap_size=(64, 64),
                                      sigma=2), joints, vis)
    chex.assert_shape(target, (48, 16, 64, 64))
    chex.assert_shape(weight, (48, 16, 1))
    chex.assert_type([target, weight], np.float32)


def test_generate_targets_is_generate_target_per_sample():
    joints = np.array([[[12.0, 8.0], [40.0, 16.0]], [[-3.0, 16.0], [44.0, 16.0]]])
    vis = np.ones((2, 2))
    target, weight = generate_targets(joints, vis, sigma=1, **SMALL)
    chex.assert_shape(target, (2, 2, 8, 8))
    for n in range(2):
        t, w = generate_target_np(joints[n], vis[n], sigma=1, **SMALL)
        np.testing.assert_allclose(np.asarray(target[n]), t, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(np.asarray(weight[n]), w)


def test_generate_target_works_inside_jit():
    fn = jax.jit(lambda j, v: generate_target(j, v, sigma=1, **SMALL))
    target, weight = fn(np.array([[12.0, 8.0]]), np.array([1.0]))
    assert float(target[0, 2, 3]) == 1.0 and float(weight[0, 0]) == 1.0


def test_joints_with_4_columns_raise_naming_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(J, 2\) or \(J, 3\)"):
        generate_target_np(np.zeros((16, 4)), np.ones(16), sigma=2, **SMALL)
    with pytest.raises(ValueError, match=r"\(B, J, 2\) or \(B, J, 3\)"):
        generate_targets(np.zeros((2, 16, 4)), np.ones((2, 16)), sigma=2, **SMALL)


def test_joints_vis_for_another_number_of_joints_raises():
    with pytest.raises(ValueError, match="joints_vis: expected shape"):
        generate_target(np.zeros((16, 2)), np.ones(15), sigma=2, **SMALL)


def test_only_gaussian_targets_are_supported():
    with pytest.raises(ValueError, match="only 'gaussian'"):
        generate_target_np(np.zeros((1, 2)), np.ones(1), sigma=2, target_type="offset", **SMALL)


def test_numpy_entry_point_runs_without_importing_jax():
    code = (
        "import sys, numpy as np\n"
        "from hrnet_jax.targets import generate_target_np\n"
        "from hrnet_jax.transforms import get_affine_transform\n"
        "t, w = generate_target_np(np.array([[12.0, 8.0]]), np.ones(1), image_size=(32, 32),"
        " heatmap_size=(8, 8), sigma=1)\n"
        "get_affine_transform(np.array([1.0, 2.0]), 1.0, 0, (8, 8))\n"
        "assert t[0, 2, 3] == 1.0\n"
        "assert 'jax' not in sys.modules, 'jax was imported'\n"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
