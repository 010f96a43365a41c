"""The heatmap argmax, final predictions in image pixels, and the flip test.

Examples use 8 x 8 heatmaps and boxes of 32 px (scale 0.16): heatmap point
(x, y) maps to center + 4 * ((x, y) - (4, 4)).
"""

import chex
import jax
import numpy as np
import pytest

from hrnet_jax.data.mpii import MPII_KEYPOINTS
from hrnet_jax.decode import flip_back, fuse_flip, get_final_preds, get_max_preds

MPII_FLIP_PAIRS = MPII_KEYPOINTS.flip_pairs

CENTER = np.array([[100.0, 60.0]])
SCALE = np.array([[0.16, 0.16]])


# --------------------------------------------------------------------------- get_max_preds


def test_argmax_gives_x_as_column_and_y_as_row():
    hm = np.zeros((1, 1, 3, 4), np.float32)
    hm[0, 0, 2, 1] = 0.7  # row 2, column 1
    preds, maxvals = get_max_preds(hm)
    np.testing.assert_array_equal(np.asarray(preds), [[[1.0, 2.0]]])
    np.testing.assert_allclose(np.asarray(maxvals), [[[0.7]]])


def test_a_tie_takes_the_first_flat_index():
    hm = np.zeros((1, 1, 3, 4), np.float32)
    hm[0, 0, 0, 3] = hm[0, 0, 1, 0] = 1.0  # flat indices 3 and 4
    preds, _ = get_max_preds(hm)
    np.testing.assert_array_equal(np.asarray(preds), [[[3.0, 0.0]]])


def test_nonpositive_maximum_gives_zero_coordinates_but_keeps_the_value():
    hm = np.full((1, 2, 3, 4), -1.0, np.float32)
    hm[0, 0, 2, 1] = -0.25
    hm[0, 1] = 0.0
    preds, maxvals = get_max_preds(hm)
    np.testing.assert_array_equal(np.asarray(preds), np.zeros((1, 2, 2)))
    np.testing.assert_array_equal(np.asarray(maxvals), [[[-0.25], [0.0]]])


def test_a_maximum_of_exactly_zero_away_from_index_0_gives_zero_coordinates():
    # The reference keeps coordinates where the maximum is > 0: a 0 at (x, y) =
    # (2, 1) among -1s is dropped to (0, 0); the smallest normal positive
    # float32 there is kept.
    hm = np.full((1, 2, 3, 4), -1.0, np.float32)
    hm[0, 0, 1, 2] = 0.0
    hm[0, 1, 1, 2] = np.finfo(np.float32).tiny
    preds, maxvals = get_max_preds(hm)
    np.testing.assert_array_equal(np.asarray(preds), [[[0.0, 0.0], [2.0, 1.0]]])
    np.testing.assert_array_equal(np.asarray(maxvals)[0, 0], [0.0])


def test_get_max_preds_of_48x16x64x64_is_48x16x2_float32_and_48x16x1():
    preds, maxvals = jax.eval_shape(get_max_preds,
                                    jax.ShapeDtypeStruct((48, 16, 64, 64), np.float32))
    chex.assert_shape(preds, (48, 16, 2))
    chex.assert_shape(maxvals, (48, 16, 1))
    chex.assert_type([preds, maxvals], np.float32)


def test_heatmap_without_batch_axis_raises_naming_b_j_h_w():
    with pytest.raises(ValueError, match=r"\(B, J, H, W\).*batch axis"):
        get_max_preds(np.zeros((16, 64, 64), np.float32))


def test_channels_last_heatmaps_raise_naming_b_j_h_w():
    with pytest.raises(ValueError, match=r"\(B, J, H, W\).*channels-last"):
        get_max_preds(np.zeros((2, 64, 64, 16), np.float32))


def test_as_many_joints_as_rows_is_not_mistaken_for_channels_last():
    # 16 joints on 12 x 16 (width x height) heatmaps: (B, 16, 16, 12) is channels first.
    preds, _ = get_max_preds(np.ones((1, 16, 16, 12), np.float32))
    chex.assert_shape(preds, (1, 16, 2))


def test_small_square_heatmaps_with_half_as_many_columns_are_taken_as_channels_first():
    # 4 x 8 (width x height) maps of 8 joints: (B, 8, 8, 4) could be read either way;
    # like the reference, a shape this small is taken as (B, J, H, W).
    heatmaps = np.zeros((1, 8, 8, 4), np.float32)
    heatmaps[0, 3, 5, 2] = 1.0  # joint 3 at (x, y) = (2, 5)
    preds, _ = get_max_preds(heatmaps)
    chex.assert_shape(preds, (1, 8, 2))
    np.testing.assert_array_equal(np.asarray(preds)[0, 3], [2.0, 5.0])


# --------------------------------------------------------------------------- final predictions


def one_map(peak_xy, neighbours=None):
    """(1, 1, 8, 8) heatmap with 1 at the peak and given values at (x, y) neighbours."""
    hm = np.zeros((1, 1, 8, 8), np.float32)
    hm[0, 0, peak_xy[1], peak_xy[0]] = 1.0
    for (x, y), v in (neighbours or {}).items():
        hm[0, 0, y, x] = v
    return hm


def test_heatmap_centre_maps_to_the_box_centre():
    hm = one_map((4, 4), {(5, 4): 0.5, (3, 4): 0.5, (4, 5): 0.5, (4, 3): 0.5})
    preds, maxvals = get_final_preds(hm, CENTER, SCALE)
    np.testing.assert_allclose(np.asarray(preds), [[[100.0, 60.0]]], atol=1e-4)
    np.testing.assert_allclose(np.asarray(maxvals), [[[1.0]]])


def test_prediction_moves_a_quarter_pixel_towards_the_higher_neighbour():
    # Peak (4, 3); right 0.6 > left 0.2 -> x + 0.25; below 0.1 < above 0.3 -> y - 0.25.
    # (4.25, 2.75) -> (100 + 4 * 0.25, 60 + 4 * (-1.25)) = (101, 55).
    hm = one_map((4, 3), {(5, 3): 0.6, (3, 3): 0.2, (4, 4): 0.1, (4, 2): 0.3})
    preds, _ = get_final_preds(hm, CENTER, SCALE)
    np.testing.assert_allclose(np.asarray(preds), [[[101.0, 55.0]]], atol=1e-4)


def test_without_post_processing_the_integer_argmax_is_used():
    hm = one_map((4, 3), {(5, 3): 0.6, (3, 3): 0.2, (4, 4): 0.1, (4, 2): 0.3})
    preds, _ = get_final_preds(hm, CENTER, SCALE, post_process=False)
    np.testing.assert_allclose(np.asarray(preds), [[[100.0, 56.0]]], atol=1e-4)


def test_refinement_needs_1_lt_px_lt_w_minus_1_and_1_lt_py_lt_h_minus_1():
    # Column 1 and row 1 are left alone (as in the reference); column 6 = w - 2 is refined.
    higher_right = {(2, 4): 0.5, (7, 4): 0.5, (2, 1): 0.5}
    on_col_1 = one_map((1, 4), {k: v for k, v in higher_right.items() if k == (2, 4)})
    on_col_6 = one_map((6, 4), {k: v for k, v in higher_right.items() if k == (7, 4)})
    on_row_1 = one_map((1, 1), {k: v for k, v in higher_right.items() if k == (2, 1)})
    for hm, want_x in ((on_col_1, 1.0), (on_col_6, 6.25)):
        preds, _ = get_final_preds(hm, CENTER, SCALE)
        np.testing.assert_allclose(float(preds[0, 0, 0]), 100 + 4 * (want_x - 4), atol=1e-4)
    preds, _ = get_final_preds(on_row_1, CENTER, SCALE)
    np.testing.assert_allclose(np.asarray(preds), [[[100 - 12.0, 60 - 12.0]]], atol=1e-4)


@pytest.mark.parametrize(
    ("peak", "neighbours", "expected"),
    [
        # Column 0 and column 7 = W - 1: neither x nor y moves, though the
        # neighbours to the right/left and below differ. (x, y) -> 100 + 4 (x - 4), 60 + 4 (y - 4).
        ((0, 4), {(1, 4): 0.5, (0, 5): 0.5}, (84.0, 60.0)),
        ((7, 4), {(6, 4): 0.5, (7, 5): 0.5}, (112.0, 60.0)),
        # Row 0 and row 7 = H - 1: likewise, with differing right and lower/upper neighbours.
        ((4, 0), {(5, 0): 0.5, (4, 1): 0.5}, (100.0, 44.0)),
        ((4, 7), {(5, 7): 0.5, (4, 6): 0.5}, (100.0, 72.0)),
    ],
)
def test_peaks_in_the_first_or_last_row_or_column_are_not_refined(peak, neighbours, expected):
    preds, _ = get_final_preds(one_map(peak, neighbours), CENTER, SCALE)
    np.testing.assert_allclose(np.asarray(preds), [[expected]], atol=1e-4)


def test_refinement_bounds_use_the_width_for_x_and_the_height_for_y():
    # 8 wide, 6 high: (x, y) -> (100, 60) + 4 ((x, y) - (4, 3)).
    # Row 5 = H - 1 is left alone; row 4 = H - 2 and column 6 = W - 2 (> H - 1) are refined.
    hm = np.zeros((1, 3, 6, 8), np.float32)
    hm[0, 0, 5, 3] = 1.0
    hm[0, 0, 5, 4] = hm[0, 0, 4, 3] = 0.5  # right and above higher
    hm[0, 1, 4, 3] = 1.0
    hm[0, 1, 4, 4] = hm[0, 1, 5, 3] = 0.5  # right and below higher: (3.25, 4.25)
    hm[0, 2, 2, 6] = 1.0
    hm[0, 2, 2, 7] = 0.5  # right higher: (6.25, 2)
    preds, _ = get_final_preds(hm, CENTER, SCALE)
    np.testing.assert_allclose(np.asarray(preds), [[[96.0, 68.0], [97.0, 65.0], [109.0, 56.0]]],
                               atol=1e-4)


def test_a_zero_maximum_away_from_the_corner_decodes_to_the_box_corner():
    # get_max_preds drops a maximum that is not > 0 to (0, 0), which is not refined.
    hm = np.full((1, 1, 8, 8), -1.0, np.float32)
    hm[0, 0, 3, 5] = 0.0
    hm[0, 0, 3, 6] = -0.5
    preds, maxvals = get_final_preds(hm, CENTER, SCALE)
    np.testing.assert_allclose(np.asarray(preds), [[[84.0, 44.0]]], atol=1e-4)
    assert float(maxvals[0, 0, 0]) == 0.0


def test_nonpositive_heatmap_decodes_to_the_box_corner():
    # get_max_preds gives (0, 0): the top-left of the box, (100 - 16, 60 - 16).
    hm = -np.ones((1, 1, 8, 8), np.float32)
    preds, maxvals = get_final_preds(hm, CENTER, SCALE)
    np.testing.assert_allclose(np.asarray(preds), [[[84.0, 44.0]]], atol=1e-4)
    assert float(maxvals[0, 0, 0]) == -1.0


def test_each_sample_uses_its_own_center_and_scale():
    hm = np.concatenate([one_map((4, 4)), one_map((6, 4))])
    center = np.array([[100.0, 60.0], [0.0, 0.0]])
    scale = np.array([[0.16, 0.16], [0.08, 0.5]])  # second box: 16 px wide, factor 2
    preds, _ = get_final_preds(hm, center, scale, post_process=False)
    np.testing.assert_allclose(np.asarray(preds), [[[100.0, 60.0]], [[4.0, 0.0]]], atol=1e-4)


def test_final_preds_of_48x16x64x64_are_48x16x2_and_48x16x1():
    preds, maxvals = jax.eval_shape(
        get_final_preds, jax.ShapeDtypeStruct((48, 16, 64, 64), np.float32),
        jax.ShapeDtypeStruct((48, 2), np.float32), jax.ShapeDtypeStruct((48, 2), np.float32))
    chex.assert_shape([preds, maxvals], [(48, 16, 2), (48, 16, 1)])
    chex.assert_type([preds, maxvals], np.float32)


def test_get_final_preds_works_inside_jit():
    hm = one_map((4, 3), {(5, 3): 0.6, (3, 3): 0.2, (4, 4): 0.1, (4, 2): 0.3})
    preds, _ = jax.jit(get_final_preds)(hm, CENTER, SCALE)
    np.testing.assert_allclose(np.asarray(preds), [[[101.0, 55.0]]], atol=1e-4)


def test_center_without_batch_axis_raises_naming_b_2():
    with pytest.raises(ValueError, match=r"center: expected shape \(B, 2\) = \(1, 2\) to go "
                                         r"with heatmaps \(1, 1, 8, 8\), got \(2,\)"):
        get_final_preds(one_map((4, 4)), CENTER[0], SCALE)


def test_scalar_scale_per_sample_raises_naming_b_2():
    with pytest.raises(ValueError, match=r"scale: expected shape \(B, 2\) = \(1, 2\) to go "
                                         r"with heatmaps \(1, 1, 8, 8\), got \(1,\)"):
        get_final_preds(one_map((4, 4)), CENTER, SCALE[:, 0])


def test_heatmap_without_batch_axis_raises():
    with pytest.raises(ValueError, match=r"\(B, J, H, W\)"):
        get_final_preds(one_map((4, 4))[0], CENTER, SCALE)


# --------------------------------------------------------------------------- flip test


def test_flip_back_mirrors_the_width_axis_and_swaps_each_pair():
    # Joints 0 and 2 swap, joint 1 stays; each row [a, b, c] becomes [c, b, a].
    hm = np.arange(2 * 3 * 1 * 3, dtype=np.float32).reshape(2, 3, 1, 3)
    want = np.stack([hm[:, 2, :, ::-1], hm[:, 1, :, ::-1], hm[:, 0, :, ::-1]], axis=1)
    np.testing.assert_array_equal(np.asarray(flip_back(hm, ((0, 2),))), want)


def test_flip_back_with_mpii_pairs_swaps_right_and_left_joints():
    hm = np.zeros((1, 16, 2, 2), np.float32)
    hm[0, 0, 0, 0] = 1.0  # right ankle, top-left
    out = np.asarray(flip_back(hm, MPII_FLIP_PAIRS))
    assert out[0, 5, 0, 1] == 1.0 and out.sum() == 1.0  # left ankle, top-right


def test_fuse_flip_shifts_one_column_right_keeping_column_0():
    # Flipped back [1, 2, 3, 4] -> [4, 3, 2, 1]; shifted -> [4, 4, 3, 2]; averaged with 0.
    flipped = np.array([[[[1.0, 2.0, 3.0, 4.0]]]], np.float32)
    out = fuse_flip(np.zeros_like(flipped), flipped, (), shift=True)
    np.testing.assert_allclose(np.asarray(out), [[[[2.0, 2.0, 1.5, 1.0]]]])


def test_fuse_flip_without_shift_is_the_plain_average():
    flipped = np.array([[[[1.0, 2.0, 3.0, 4.0]]]], np.float32)
    out = fuse_flip(np.full_like(flipped, 2.0), flipped, (), shift=False)
    np.testing.assert_allclose(np.asarray(out), [[[[3.0, 2.5, 2.0, 1.5]]]])


def test_flip_helpers_work_inside_jit():
    hm = np.arange(16 * 4, dtype=np.float32).reshape(1, 16, 2, 2)
    jitted = jax.jit(lambda a, b: fuse_flip(a, b, MPII_FLIP_PAIRS))
    np.testing.assert_allclose(np.asarray(jitted(hm, hm)),
                               np.asarray(fuse_flip(hm, hm, MPII_FLIP_PAIRS)))


def test_flip_pair_out_of_range_raises():
    for pair in ((0, 5), (0, 3), (3, 0), (-1, 1)):
        with pytest.raises(ValueError, match=r"flip_pairs: pair .* out of range for 3 joints"):
            flip_back(np.zeros((1, 3, 2, 2), np.float32), (pair,))


def test_a_flip_pair_may_name_its_joints_in_either_order_joint_0_included():
    hm = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    np.testing.assert_array_equal(np.asarray(flip_back(hm, ((1, 0),))),
                                  np.asarray(flip_back(hm, ((0, 1),))))
    np.testing.assert_array_equal(np.asarray(flip_back(hm, ((2, 0),)))[0, 0], hm[0, 2, :, ::-1])


def test_fuse_flip_shifts_by_default_as_the_reference_does():
    flipped = np.array([[[[1.0, 2.0, 3.0, 4.0]]]], np.float32)
    np.testing.assert_array_equal(np.asarray(fuse_flip(np.zeros_like(flipped), flipped, ())),
                                  [[[[2.0, 2.0, 1.5, 1.0]]]])


def test_flip_helpers_name_the_argument_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"heatmaps_flipped: expected a batch of heatmaps"):
        flip_back(np.zeros((3, 2, 2), np.float32), ())
    with pytest.raises(ValueError, match=r"^output: expected a batch of heatmaps"):
        fuse_flip(np.zeros((3, 2, 2), np.float32), np.zeros((3, 2, 2), np.float32), ())
    with pytest.raises(ValueError, match=r"output_flipped: expected the output's shape "
                                         r"\(B, J, H, W\) = \(1, 2, 2, 2\), got \(1, 2, 2, 3\)"):
        fuse_flip(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 3), np.float32), ())


def test_final_preds_of_arrays_are_mapped_back_in_float64_and_rounded_once_to_float32():
    # 48 x 64 heatmaps (W x H), peak at (x, y) = (2, 9), no refinement; box centre
    # (1000.1, 700.3) and scale 2.9 given in float64, as the reference's records are.
    # The reference rounds its construction points to float32: the centre
    # c = (f32(1000.1), f32(700.3)) and the point above it at y1 = f32(700.3 - 290),
    # and maps back in float64 with the box half-height d = c_y - y1 spanning
    # W / 2 heatmap pixels: p = c + (2 d / W) * ((x, y) - (W / 2, H / 2)). All of this
    # is exact in float64 here; the result is rounded once to float32.
    hm = np.zeros((1, 1, 64, 48), np.float32)
    hm[0, 0, 9, 2] = 1.0
    cx, cy = float(np.float32(1000.1)), float(np.float32(700.3))
    d = cy - float(np.float32(700.3 - 290.0))
    expected = np.array([[[cx + 2 * d / 48 * (2 - 24), cy + 2 * d / 48 * (9 - 32)]]], np.float32)
    # (734.26666, 422.38333); float32 arithmetic throughout would give y one step lower.
    preds, _ = get_final_preds(hm, np.array([[1000.1, 700.3]]), np.array([[2.9, 2.9]]),
                               post_process=False)
    assert np.asarray(preds).dtype == np.float32
    np.testing.assert_array_equal(np.asarray(preds), expected)
