"""PCK accuracy, PCKh and the MPII table, from hand-worked examples."""

import collections

import chex
import jax
import numpy as np
import pytest
import scipy.io

from hrnet_jax.metrics import (
    MPII_DATASET_JOINTS,
    format_pckh_table,
    mpii_evaluate,
    pck_accuracy,
    pckh,
)

# --------------------------------------------------------------------------- pck_accuracy


def peaks(shape, points):
    """Heatmaps with a single 1 at each (sample, joint) -> (x, y); others zero."""
    hm = np.zeros(shape, np.float32)
    for (n, j), (x, y) in points.items():
        hm[n, j, y, x] = 1.0
    return hm


def test_pck_normalises_x_by_height_and_y_by_width():
    # H = 20, W = 40: x distances are divided by 2, y distances by 4 (the reference's pairing).
    # Joint 0 off by 1 in x: 0.5, not < 0.5 -> miss. Joint 1 off by 1 in y: 0.25 -> hit.
    shape = (1, 2, 20, 40)
    target = peaks(shape, {(0, 0): (10, 10), (0, 1): (10, 10)})
    output = peaks(shape, {(0, 0): (11, 10), (0, 1): (10, 11)})
    acc, avg, cnt, pred = pck_accuracy(output, target)
    np.testing.assert_allclose(np.asarray(acc), [0.5, 0.0, 1.0])
    assert float(avg) == 0.5 and int(cnt) == 2
    np.testing.assert_array_equal(np.asarray(pred), [[[11, 10], [10, 11]]])


def test_pck_threshold_is_strict_and_adjustable():
    shape = (1, 2, 20, 40)
    target = peaks(shape, {(0, 0): (10, 10), (0, 1): (10, 10)})
    output = peaks(shape, {(0, 0): (11, 10), (0, 1): (10, 11)})
    acc, _, _, _ = pck_accuracy(output, target, thr=0.6)
    np.testing.assert_allclose(np.asarray(acc), [1.0, 1.0, 1.0])


def test_pck_counts_a_joint_only_where_target_x_and_y_exceed_1():
    # Samples where the target peak sits at x = 1 or y = 1 are not counted.
    # Joint 0: counted in sample 1 only (a hit); joint 1: never counted -> -1.
    shape = (2, 2, 8, 8)
    target = peaks(shape, {(0, 0): (1, 5), (1, 0): (4, 4), (0, 1): (5, 1), (1, 1): (0, 0)})
    output = peaks(shape, {(0, 0): (7, 7), (1, 0): (4, 4), (0, 1): (5, 1), (1, 1): (0, 0)})
    acc, avg, cnt, _ = pck_accuracy(output, target)
    np.testing.assert_allclose(np.asarray(acc), [1.0, 1.0, -1.0])
    assert float(avg) == 1.0 and int(cnt) == 1


def test_pck_is_the_fraction_of_counted_samples_and_the_average_over_counted_joints():
    # Joint 0: 1 hit of 2 counted -> 0.5; joint 1: 1 of 1 -> 1.0; average 0.75.
    shape = (2, 2, 10, 10)  # normaliser 1 px on both axes
    target = peaks(shape, {(0, 0): (3, 3), (1, 0): (5, 5), (0, 1): (4, 4), (1, 1): (0, 0)})
    output = peaks(shape, {(0, 0): (3, 3), (1, 0): (6, 6), (0, 1): (4, 4), (1, 1): (9, 9)})
    acc, avg, cnt, _ = pck_accuracy(output, target)
    np.testing.assert_allclose(np.asarray(acc), [0.75, 0.5, 1.0])
    assert float(avg) == 0.75 and int(cnt) == 2


def test_pck_with_no_counted_joint_reports_zero_average():
    shape = (1, 3, 8, 8)
    acc, avg, cnt, _ = pck_accuracy(np.ones(shape, np.float32), np.zeros(shape, np.float32))
    np.testing.assert_array_equal(np.asarray(acc), [0.0, -1.0, -1.0, -1.0])
    assert float(avg) == 0.0 and int(cnt) == 0


def test_pck_average_on_arrays_is_the_float64_mean_of_the_joint_fractions_rounded_once():
    # 16 joints on 7 samples: joint j is counted in its first n_j samples and correct
    # in the first h_j of those. The fractions sum to 9.3, so the mean is 0.58125
    # exactly, and float32 0.58125 is what must come out (a float32 running sum of
    # the fractions ends one float32 step lower).
    n = [6, 4, 5, 1, 2, 4, 6, 1, 1, 2, 5, 6, 5, 7, 2, 3]
    h = [4, 2, 4, 1, 0, 2, 4, 1, 0, 2, 4, 1, 1, 7, 2, 0]
    target = np.zeros((7, 16, 8, 8), np.float32)
    output = np.zeros((7, 16, 8, 8), np.float32)
    for j in range(16):
        for b in range(n[j]):
            target[b, j, 4, 4] = 1.0  # counted: the target's peak has x, y > 1
            output[b, j, 4, 4 if b < h[j] else 6] = 1.0  # a miss is 2 px = 2.5 norms off
    acc, avg, cnt, _ = pck_accuracy(output, target)
    assert int(cnt) == 16
    assert float(avg) == float(np.float32(0.58125)) == float(np.asarray(acc)[0])
    np.testing.assert_allclose(np.asarray(acc)[1:], np.array(h) / np.array(n), rtol=1e-7)


def test_pck_accuracy_of_48x16x64x64_returns_17_accuracies_and_48x16x2_preds():
    hm = jax.ShapeDtypeStruct((48, 16, 64, 64), np.float32)
    acc, avg, cnt, pred = jax.eval_shape(pck_accuracy, hm, hm)
    chex.assert_shape([acc, avg, cnt, pred], [(17,), (), (), (48, 16, 2)])


def test_pck_accuracy_works_inside_jit():
    shape = (1, 2, 20, 40)
    target = peaks(shape, {(0, 0): (10, 10), (0, 1): (10, 10)})
    output = peaks(shape, {(0, 0): (11, 10), (0, 1): (10, 11)})
    acc, *_ = jax.jit(pck_accuracy)(output, target, 0.5)
    np.testing.assert_allclose(np.asarray(acc), [0.5, 0.0, 1.0])


def test_pck_with_target_of_another_shape_raises():
    with pytest.raises(ValueError, match="target: expected the output's shape"):
        pck_accuracy(np.zeros((1, 2, 8, 8)), np.zeros((1, 3, 8, 8)))


# --------------------------------------------------------------------------- pckh

# Three records, two joints. Head boxes: diagonals 50, 100, 10 -> head sizes
# 0.6 x diagonal = 30, 60, 6.
HEADBOXES = np.array([[[0, 0], [30, 40]], [[10, 10], [70, 90]], [[0, 0], [6, 8]]], np.float32)
GT = np.full((3, 2, 2), 100.0, np.float32)
# Joint 0 errors: 12 (0.4 head), 40 (0.67), record 2 not visible (its error is ignored).
# Joint 1 errors: 0, 25 (0.42), 5 (0.83).
PRED = GT + np.array([[[0, 12], [0, 0]], [[40, 0], [15, 20]], [[900, 0], [3, 4]]], np.float32)
VISIBLE = np.array([[1, 1], [1, 1], [0, 1]], np.float32)


def test_pckh_is_the_percent_of_visible_joints_within_threshold_head_sizes():
    np.testing.assert_allclose(np.asarray(pckh(PRED, GT, HEADBOXES, VISIBLE)), [50.0, 200 / 3],
                               rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(pckh(PRED, GT, HEADBOXES, VISIBLE, threshold=0.1)), [0.0, 100 / 3], rtol=1e-6)


def test_pckh_error_equal_to_the_threshold_counts():
    # sc_bias 1: head size 50, error 25 -> exactly 0.5 head sizes.
    pred = np.array([[[125.0, 100.0]]])
    got = pckh(pred, np.full((1, 1, 2), 100.0), HEADBOXES[:1], np.ones((1, 1)), sc_bias=1.0)
    np.testing.assert_allclose(np.asarray(got), [100.0])


def test_pckh_of_a_never_visible_joint_is_nan():
    got = pckh(PRED, GT, HEADBOXES, np.array([[1, 0], [1, 0], [0, 0]], np.float32))
    assert float(got[0]) == 50.0 and np.isnan(float(got[1]))


def test_pckh_works_inside_jit():
    got = jax.jit(pckh)(PRED, GT, HEADBOXES, VISIBLE, 0.5, 0.6)
    np.testing.assert_allclose(np.asarray(got), [50.0, 200 / 3], rtol=1e-6)


def test_pckh_with_headboxes_of_the_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"headboxes: expected shape \(N, 2, 2\)"):
        pckh(PRED, GT, HEADBOXES[:, 0], VISIBLE)


# --------------------------------------------------------------------------- mpii_evaluate

# Four records, all head sizes 0.6 x 50 = 30, all joints at (100, 100) (1-based).
# Errors along x per record, by default [0, 3.15, 12, 30] px = [0, 0.105, 0.4, 1.0]
# head sizes: correct at 0.5 in 3 of 4 records, at 0.11 in 2, at 0.1 in 1.
# Right shoulder (12) is exact in every record; pelvis (6) and thorax (7) are
# wrong everywhere; the left ankle (5) is missing in record 3.
DEFAULT_ERRORS = [0.0, 3.15, 12.0, 30.0]


def mpii_case():
    errors = np.tile(DEFAULT_ERRORS, (16, 1))  # (16 joints, 4 records)
    errors[12] = 0.0
    errors[6] = errors[7] = 30.0
    jnt_missing = np.zeros((16, 4), np.uint8)
    jnt_missing[5, 3] = 1
    pos_gt = np.full((16, 2, 4), 100.0)
    headboxes = np.zeros((2, 2, 4))
    headboxes[1] = np.array([[30.0], [40.0]])
    preds = np.zeros((4, 16, 3))
    preds[:, :, 0] = 99.0 + errors.T  # 0-based predictions: MPII annotations are 1-based
    preds[:, :, 1] = 99.0
    preds[:, :, 2] = 0.9  # a score column, ignored
    names = np.empty((1, 16), dtype=object)
    for i, name in enumerate(MPII_DATASET_JOINTS):
        names[0, i] = np.array([name])  # as scipy.io.loadmat returns them
    gt = {"dataset_joints": names, "jnt_missing": jnt_missing, "pos_gt_src": pos_gt,
          "headboxes_src": headboxes}
    return preds, gt


SCALAR_KEYS = ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1",
               "Mean@0.1(true)"]


def test_mpii_table_columns_and_values_from_hand_counts():
    preds, gt = mpii_case()
    res = mpii_evaluate(preds, gt)
    assert isinstance(res, collections.OrderedDict)
    assert list(res)[:10] == SCALAR_KEYS
    assert res["Head"] == pytest.approx(75.0)
    assert res["Shoulder"] == pytest.approx((100.0 + 75.0) / 2)  # right 4/4, left 3/4
    for part in ("Elbow", "Wrist", "Hip", "Knee"):
        assert res[part] == pytest.approx(75.0)
    assert res["Ankle"] == pytest.approx((75.0 + 100.0) / 2)  # left: 3 of 3 visible


def test_mpii_mean_weights_joints_by_visible_count_and_leaves_out_pelvis_and_thorax():
    # 14 joints kept, 55 visible (left ankle 3, others 4). Correct at 0.5: 12 joints x 3,
    # right shoulder 4, left ankle 3 = 43. Pelvis and thorax (all wrong) do not count.
    res = mpii_evaluate(*mpii_case())
    assert res["Mean"] == pytest.approx(100 * 43 / 55)


def test_reference_mean_at_0_1_uses_threshold_0_11():
    # An error of 0.105 head sizes is within 0.11 but not within 0.1.
    # At 0.11: 12 x 2 + 4 + 2 = 30 of 55. At 0.1: 12 x 1 + 4 + 1 = 17 of 55.
    res = mpii_evaluate(*mpii_case())
    assert res["Mean@0.1"] == pytest.approx(100 * 30 / 55)
    assert res["Mean@0.1(true)"] == pytest.approx(100 * 17 / 55)


def test_mpii_curve_runs_over_thresholds_0_to_0_5_in_steps_of_0_01():
    res = mpii_evaluate(*mpii_case())
    thresholds, curve = res["PCKh thresholds"], res["PCKh curve"]
    assert thresholds.shape == curve.shape == (51,)
    assert thresholds[0] == 0.0 and thresholds[10] == pytest.approx(0.1)
    assert thresholds[11] == pytest.approx(0.11) and thresholds[50] == pytest.approx(0.5)
    assert curve[0] == pytest.approx(100 * 17 / 55)  # only exact predictions at threshold 0
    assert curve[11] == pytest.approx(res["Mean@0.1"])
    assert curve[50] == pytest.approx(res["Mean"])
    assert res["PCKh per joint"].shape == (16,)


def test_mpii_predictions_are_0_based_and_shifted_by_one():
    # Head size 0.6 x 2.5 = 1.5: a prediction at the 1-based position itself is
    # sqrt(2) px = 0.94 head sizes off after the +1 shift.
    preds, gt = mpii_case()
    gt["headboxes_src"] = np.zeros((2, 2, 4))
    gt["headboxes_src"][1] = np.array([[1.5], [2.0]])
    preds[:, :, :2] = 99.0
    assert mpii_evaluate(preds, gt)["Head"] == pytest.approx(100.0)
    preds[:, :, :2] = 100.0
    assert mpii_evaluate(preds, gt)["Head"] == pytest.approx(0.0)


def test_mpii_evaluate_reads_a_gt_valid_mat_file(tmp_path):
    preds, gt = mpii_case()
    path = tmp_path / "gt_valid.mat"
    scipy.io.savemat(path, {**gt, "dataset_joints": np.array([list(MPII_DATASET_JOINTS)],
                                                              dtype=object)})
    from_file = mpii_evaluate(preds, str(path))
    from_dict = mpii_evaluate(preds, gt)
    for key in SCALAR_KEYS:
        assert from_file[key] == pytest.approx(from_dict[key])


def test_mpii_ground_truth_without_a_key_raises_naming_it():
    preds, gt = mpii_case()
    del gt["headboxes_src"]
    with pytest.raises(ValueError, match="headboxes_src"):
        mpii_evaluate(preds, gt)


def test_mpii_predictions_for_another_number_of_records_raise():
    preds, gt = mpii_case()
    with pytest.raises(ValueError, match="3 records.*N = 4"):
        mpii_evaluate(preds[:3], gt)


def test_mpii_predictions_of_the_wrong_shape_raise():
    preds, gt = mpii_case()
    with pytest.raises(ValueError, match=r"\(N, 16, 2\) or \(N, 16, 3\)"):
        mpii_evaluate(preds[:, :15], gt)


def test_missing_ground_truth_file_raises_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="gt_valid.mat"):
        mpii_evaluate(np.zeros((1, 16, 2)), str(tmp_path / "gt_valid.mat"))


def test_pckh_table_prints_a_header_a_rule_and_values_with_3_decimals():
    table = format_pckh_table(collections.OrderedDict(
        [("Head", 97.1), ("Mean", 90.12345), ("PCKh curve", np.zeros(51))]))
    assert table.splitlines() == [
        "| Arch | Head | Mean |",
        "|---|---|---|",
        "| pose_hrnet | 97.100 | 90.123 |",
    ]


# --------------------------------------------------------------------------- exact ties


@pytest.mark.parametrize("error, threshold, expected", [
    (0.66, 0.11, 100.0), (0.18, 0.03, 100.0), (0.36, 0.06, 100.0), (0.72, 0.12, 100.0),
    # 1.08 / 6 is 0.18000000000000002 in float64 (the reference's arithmetic): just over.
    (1.08, 0.18, 0.0),
])
def test_pckh_on_arrays_decides_exact_ties_in_float64_as_the_reference(error, threshold, expected):
    # A head box 10 px wide: head size 0.6 x 10 = 6 px. In float64, 0.66 / 6 is
    # exactly the double nearest 0.11, so that joint is correct; in float32
    # arithmetic each of these cases would be decided the other way.
    got = pckh(np.array([[[error, 0.0]]]), np.zeros((1, 1, 2)),
               np.array([[[3.0, 4.0], [13.0, 4.0]]]), np.ones((1, 1)), threshold=threshold)
    np.testing.assert_allclose(np.asarray(got), [expected])


def test_mpii_adds_the_one_to_float32_predictions_in_float32():
    # A float32 prediction x = -2^-26 plus 1 rounds to exactly 1.0 in float32, which
    # lies 3 px from a joint at x = 4: 0.5 head sizes of 0.6 x 10 = 6 px, so correct.
    # (In float64 it would be 3 + 2^-26 px away, and wrong.)
    preds, gt = mpii_case()
    gt["pos_gt_src"][:, 0, :] = 4.0
    gt["pos_gt_src"][:, 1, :] = 1.0
    gt["headboxes_src"] = np.zeros((2, 2, 4))
    gt["headboxes_src"][1, 0, :] = 10.0
    preds = np.zeros((4, 16, 2), np.float32)
    preds[:, :, 0] = -(2.0**-26)
    assert mpii_evaluate(preds, gt)["Head"] == pytest.approx(100.0)
    assert mpii_evaluate(preds.astype(np.float64), gt)["Head"] == pytest.approx(0.0)
