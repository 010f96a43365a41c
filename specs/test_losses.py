"""JointsMSE and OHKM losses.

JointsMSE = (1 / J) sum_j 0.5 * mean_{batch, pixels} (w * pred - w * gt)^2.
OHKM: per sample, per joint 0.5 * pixel mean; the top-k joints summed / k;
averaged over the batch. Examples use 2 x 2 maps so each term is hand-countable:
a map differing by 1 on all 4 pixels has 0.5 * 4/4 = 0.5, on one pixel
0.5 * 1/4 = 0.125, on two pixels 0.5 * 2/4 = 0.25.
"""

import chex
import jax
import numpy as np
import pytest

from hrnet_jax.losses import joints_mse_loss, joints_ohkm_mse_loss

ONES = np.ones((2, 2), np.float32)
ONE_PIXEL = np.array([[1, 0], [0, 0]], np.float32)
TWO_PIXELS = np.array([[1, 1], [0, 0]], np.float32)
ZERO = np.zeros((2, 2), np.float32)


def maps(*rows):
    """(B, J, 2, 2) from rows of per-joint 2 x 2 maps."""
    return np.array([list(r) for r in rows], np.float32)


def weights(*rows):
    return np.array(rows, np.float32)[..., None]


def test_identical_maps_have_zero_loss():
    out = maps([ONES, ONE_PIXEL])
    assert float(joints_mse_loss(out, out, weights([1, 1]))) == 0.0


def test_mse_is_half_pixel_mean_per_joint_averaged_over_joints():
    # Joint 0: 0.125, joint 1: 0.5 -> (0.125 + 0.5) / 2.
    loss = joints_mse_loss(maps([ONE_PIXEL, ONES]), maps([ZERO, ZERO]), weights([1, 1]))
    assert float(loss) == pytest.approx(0.3125)


def test_zero_weight_removes_a_joint_but_still_divides_by_all_joints():
    loss = joints_mse_loss(maps([ONE_PIXEL, ONES]), maps([ZERO, ZERO]), weights([1, 0]))
    assert float(loss) == pytest.approx(0.125 / 2)


def test_weight_multiplies_prediction_and_target_before_squaring():
    # Joint 1 with w = 0.5: 0.5 * mean((0.5 * 1 - 0.5 * 0)^2) = 0.125.
    loss = joints_mse_loss(maps([ONE_PIXEL, ONES]), maps([ZERO, ZERO]), weights([1, 0.5]))
    assert float(loss) == pytest.approx((0.125 + 0.125) / 2)


def test_weight_scales_the_target_as_well_as_the_prediction():
    # Prediction and target both 1 with w = 0.5: (0.5 * 1 - 0.5 * 1)^2 = 0 everywhere.
    loss = joints_mse_loss(maps([ONES, ONES]), maps([ONES, ZERO]), weights([0.5, 1]))
    assert float(loss) == pytest.approx(0.5 / 2)


def test_use_target_weight_false_ignores_the_weights():
    loss = joints_mse_loss(maps([ONE_PIXEL, ONES]), maps([ZERO, ZERO]), weights([1, 0]),
                           use_target_weight=False)
    assert float(loss) == pytest.approx(0.3125)


def test_mse_averages_over_the_batch():
    # Second sample is exact: the batch mean halves the first sample's loss.
    out = maps([ONE_PIXEL, ONES], [ZERO, ZERO])
    loss = joints_mse_loss(out, np.zeros_like(out), weights([1, 1], [1, 1]))
    assert float(loss) == pytest.approx(0.3125 / 2)


def test_ohkm_keeps_each_samples_topk_hardest_joints():
    # Sample 0 per-joint losses (0.5, 0.125, 0); sample 1 (0, 0.25, 0.125).
    out = maps([ONES, ONE_PIXEL, ZERO], [ZERO, TWO_PIXELS, ONE_PIXEL])
    gt, w = np.zeros_like(out), weights([1, 1, 1], [1, 1, 1])
    top2 = ((0.5 + 0.125) / 2 + (0.25 + 0.125) / 2) / 2
    assert float(joints_ohkm_mse_loss(out, gt, w, topk=2)) == pytest.approx(top2)
    assert float(joints_ohkm_mse_loss(out, gt, w, topk=1)) == pytest.approx((0.5 + 0.25) / 2)


def test_ohkm_applies_target_weight_before_ranking():
    # With joint 0 of sample 0 weighted out, its hardest joints are (0.125, 0).
    out = maps([ONES, ONE_PIXEL, ZERO], [ZERO, TWO_PIXELS, ONE_PIXEL])
    w = weights([0, 1, 1], [1, 1, 1])
    want = ((0.125 + 0) / 2 + (0.25 + 0.125) / 2) / 2
    assert float(joints_ohkm_mse_loss(out, np.zeros_like(out), w, topk=2)) == pytest.approx(want)
    unweighted = joints_ohkm_mse_loss(out, np.zeros_like(out), w, use_target_weight=False, topk=2)
    assert float(unweighted) == pytest.approx(((0.5 + 0.125) / 2 + (0.25 + 0.125) / 2) / 2)


def test_ohkm_with_topk_equal_to_joints_is_joints_mse():
    rng = np.random.default_rng(0)
    out, gt = rng.normal(size=(2, 2, 3, 3, 4)).astype(np.float32)
    w = weights([1, 0, 1], [0.5, 1, 1])
    assert float(joints_ohkm_mse_loss(out, gt, w, topk=3)) == pytest.approx(
        float(joints_mse_loss(out, gt, w)), rel=1e-6)


def test_losses_of_48x16x64x64_heatmaps_are_float32_scalars():
    hm = jax.ShapeDtypeStruct((48, 16, 64, 64), np.float32)
    tw = jax.ShapeDtypeStruct((48, 16, 1), np.float32)
    for fn in (joints_mse_loss, joints_ohkm_mse_loss):
        loss = jax.eval_shape(fn, hm, hm, tw)
        chex.assert_shape(loss, ())
        chex.assert_type(loss, np.float32)


def test_losses_work_inside_jit_and_under_grad():
    out = maps([ONE_PIXEL, ONES])
    gt, w = maps([ZERO, ZERO]), weights([1, 1])
    assert float(jax.jit(joints_mse_loss)(out, gt, w)) == pytest.approx(0.3125)
    assert float(jax.jit(joints_ohkm_mse_loss, static_argnames="topk")(out, gt, w, topk=1)) == \
        pytest.approx(0.5)
    # d/dx of (1 / J) 0.5 mean(x^2) over 4 pixels is x / (J * 4).
    grad = jax.grad(joints_mse_loss)(out, gt, w)
    np.testing.assert_allclose(np.asarray(grad), out / 8)


def test_target_weight_without_trailing_axis_raises_naming_b_j_1():
    out = maps([ONE_PIXEL, ONES])
    with pytest.raises(ValueError, match=r"target_weight: expected shape \(B, J, 1\)"):
        joints_mse_loss(out, out, np.ones((1, 2), np.float32))


def test_channels_last_heatmaps_raise():
    out = np.zeros((2, 8, 8, 16), np.float32)
    with pytest.raises(ValueError, match=r"channels-last.*\(B, J, H, W\)"):
        joints_mse_loss(out, out, np.ones((2, 16, 1), np.float32))


def test_heatmaps_without_batch_axis_raise():
    with pytest.raises(ValueError, match=r"\(B, J, H, W\)"):
        joints_mse_loss(np.zeros((16, 8, 8)), np.zeros((16, 8, 8)), np.ones((16, 1)))


def test_target_of_another_shape_raises():
    with pytest.raises(ValueError, match="target: expected the output's shape"):
        joints_mse_loss(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 5)), np.ones((1, 2, 1)))


def test_ohkm_topk_above_the_number_of_joints_raises():
    out = maps([ONE_PIXEL, ONES])
    with pytest.raises(ValueError, match=r"topk: expected 1 <= topk <= J = 2"):
        joints_ohkm_mse_loss(out, out, weights([1, 1]), topk=8)


def test_ohkm_keeps_the_8_hardest_joints_by_default_as_the_reference():
    # Ten joints, joint j off by j on every pixel: per-joint loss 0.5 j^2. The
    # eight hardest are j = 2..9: 0.5 * (285 - 1) / 8 = 17.75.
    out = np.array([[np.full((2, 2), j, np.float32) for j in range(10)]])
    loss = joints_ohkm_mse_loss(out, np.zeros_like(out), np.ones((1, 10, 1), np.float32))
    assert float(loss) == pytest.approx(17.75)


def test_ohkm_topk_is_checked_against_the_joint_count_not_the_map_size():
    # J = 2 joints on 3 x 3 maps: topk 3 is more joints than there are.
    out = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"topk: expected 1 <= topk <= J = 2"):
        joints_ohkm_mse_loss(out, out, np.ones((1, 2, 1), np.float32), topk=3)


def test_the_channels_last_hint_is_given_only_when_the_weights_fit_channels_last_heatmaps():
    heatmaps = np.zeros((1, 2, 4, 4), np.float32)
    # (1, 3, 1) fits neither layout; (2, 4, 1) has J = W but another batch size.
    for wrong in ((1, 3, 1), (2, 4, 1)):
        with pytest.raises(ValueError, match=r"target_weight: expected shape") as info:
            joints_mse_loss(heatmaps, heatmaps, np.ones(wrong, np.float32))
        assert "channels-last" not in str(info.value)
    with pytest.raises(ValueError, match="are the heatmaps channels-last"):
        joints_mse_loss(heatmaps, heatmaps, np.ones((1, 4, 1), np.float32))
