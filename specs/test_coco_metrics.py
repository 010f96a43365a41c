"""COCO keypoints: OKS, (soft) OKS NMS, person rescoring and the COCOeval table, from hand-worked examples.

Most examples use two joints with sigma 0.5, so (2 sigma)^2 = 1, and people of
area 50, so the OKS exponent of a joint d pixels off is e = d^2 / 1 / 50 / 2 =
d^2 / 100 (np.spacing(1) is below half an ulp of 50 and vanishes): 10 px gives
e = 1, and 1000 px gives e = 10^4, whose exp(-e) underflows to exactly 0.
"""

import collections
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO

from hrnet_jax.metrics import (
    COCO_SIGMAS,
    COCO_STATS_NAMES,
    coco_evaluate,
    oks_iou,
    oks_nms,
    rescore_by_keypoints,
    soft_oks_nms,
)

SIGMAS = np.array([0.5, 0.5])
AREA = 50.0


def two_joints(first, second, scores=(1.0, 1.0)):
    """A two-joint person (2, 3) from its joints' (x, y) and scores."""
    return np.array([[*first, scores[0]], [*second, scores[1]]], np.float64)


def far_apart(n, num_joints=17):
    """n people (n, J, 3), person i a row of joints at x = 1000 i: any two have OKS 0."""
    x = 1000.0 * np.arange(n)[:, None] + 10.0 * np.arange(num_joints)
    return np.stack([x, np.zeros_like(x), np.ones_like(x)], axis=-1)


# --------------------------------------------------------------------------- constants


def test_coco_sigmas_are_the_17_reference_falloffs_over_10():
    expected = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062,
                .107, .107, .087, .087, .089, .089]
    assert COCO_SIGMAS.dtype == np.float64 and COCO_SIGMAS.shape == (17,)
    np.testing.assert_allclose(COCO_SIGMAS, expected, rtol=1e-15)


def test_stats_names_are_the_references_ten_including_its_ap_dot_5_spelling():
    assert COCO_STATS_NAMES == ("AP", "Ap .5", "AP .75", "AP (M)", "AP (L)",
                                "AR", "AR .5", "AR .75", "AR (M)", "AR (L)")


# --------------------------------------------------------------------------- oks_iou


def test_oks_of_identical_poses_is_1():
    # Every e_j = 0, exp(0) = 1, and the mean of seventeen 1s is 1.
    pose = far_apart(1)[0] + np.arange(17)[:, None]
    np.testing.assert_array_equal(oks_iou(pose, pose[None], 5000.0, np.array([7000.0])), [1.0])


def test_oks_of_one_joint_10_px_off_is_the_mean_of_1_and_exp_minus_1():
    # Joint 1 is (6, 8) off: d^2 = 36 + 64 = 100, e = 100 / 1 / 50 / 2 = 1.
    # Joint 0 agrees: exp(0) = 1. OKS = (1 + e^-1) / 2 = 0.68394...
    a = two_joints((0, 0), (10, 20))
    b = two_joints((0, 0), (16, 28))
    oks = oks_iou(a, b[None], AREA, np.array([AREA]), sigmas=SIGMAS)
    assert oks[0] == pytest.approx((1 + math.exp(-1)) / 2, rel=1e-14)


def test_oks_scales_by_the_mean_of_the_two_areas():
    # Areas 30 and 70 average to 50: the same e = 1 as above. Areas 30 and 20
    # average to 25: e = 100 / 25 / 2 = 2.
    a = two_joints((0, 0), (10, 20))
    b = two_joints((0, 0), (16, 28))
    oks = oks_iou(a, np.stack([b, b]), 30.0, np.array([70.0, 20.0]), sigmas=SIGMAS)
    np.testing.assert_allclose(oks, [(1 + math.exp(-1)) / 2, (1 + math.exp(-2)) / 2], rtol=1e-14)


def test_oks_counts_a_joint_by_its_score_in_the_other_person_only():
    # The reference's `list(a > t) and list(b > t)` is the candidate's list.
    # Joint 1 is 10 px off (e = 1); joint 0 agrees.
    # Invisible in a, visible in b: counted, OKS = (1 + e^-1) / 2.
    # Visible in a, invisible in b: not counted, OKS = exp(0) / 1 = 1.
    a_hidden = two_joints((0, 0), (10, 20), scores=(1.0, 0.0))
    b_shown = two_joints((0, 0), (16, 28), scores=(1.0, 1.0))
    a_shown = two_joints((0, 0), (10, 20), scores=(1.0, 1.0))
    b_hidden = two_joints((0, 0), (16, 28), scores=(1.0, 0.0))
    counted = oks_iou(a_hidden, b_shown[None], AREA, [AREA], sigmas=SIGMAS, in_vis_thre=0.2)
    ignored = oks_iou(a_shown, b_hidden[None], AREA, [AREA], sigmas=SIGMAS, in_vis_thre=0.2)
    assert counted[0] == pytest.approx((1 + math.exp(-1)) / 2, rel=1e-14)
    assert ignored[0] == 1.0


def test_oks_with_in_vis_thre_counts_only_scores_strictly_above_it():
    # b's joint 1 scores exactly 0.25 = in_vis_thre: not counted, so only the
    # agreeing joint 0 remains and OKS = 1 (counted, it would be (1 + e^-1) / 2).
    a = two_joints((0, 0), (10, 20))
    b = two_joints((0, 0), (16, 28), scores=(1.0, 0.25))
    assert oks_iou(a, b[None], AREA, [AREA], sigmas=SIGMAS, in_vis_thre=0.25)[0] == 1.0


def test_oks_with_no_counted_joint_is_0_even_for_identical_poses():
    a = two_joints((0, 0), (10, 20))
    b = two_joints((0, 0), (10, 20), scores=(0.1, 0.2))
    assert oks_iou(a, b[None], AREA, [AREA], sigmas=SIGMAS, in_vis_thre=0.2)[0] == 0.0


def test_oks_without_in_vis_thre_counts_joints_of_any_score():
    # Scores 0 everywhere do not matter: (1 + e^-1) / 2 as with full scores.
    a = two_joints((0, 0), (10, 20), scores=(0.0, 0.0))
    b = two_joints((0, 0), (16, 28), scores=(0.0, 0.0))
    assert oks_iou(a, b[None], AREA, [AREA], sigmas=SIGMAS)[0] == pytest.approx((1 + math.exp(-1)) / 2)


def test_oks_with_sigmas_of_another_length_raises_naming_both():
    a = two_joints((0, 0), (10, 20))
    with pytest.raises(ValueError, match=r"sigmas: .*\(2,\).*\(17,\)"):
        oks_iou(a, a[None], AREA, [AREA])  # default COCO_SIGMAS: 17 against J = 2


def test_oks_with_candidates_of_another_joint_count_raises_naming_keypoints_b():
    with pytest.raises(ValueError, match=r"keypoints_b: .*\(M, 2, 3\).*\(1, 3, 3\)"):
        oks_iou(np.zeros((2, 3)), np.zeros((1, 3, 3)), AREA, [AREA], sigmas=SIGMAS)


# --------------------------------------------------------------------------- oks_nms


def test_oks_nms_keeps_the_higher_scored_of_two_near_identical_poses():
    # Joint 0 (sigma 0.026) 1 px off on people of area 10000:
    # e = 1 / 0.052^2 / 10000 / 2 = 0.0185, OKS = (16 + e^-0.0185) / 17 = 0.9989 > 0.9.
    keypoints = np.repeat(far_apart(1), 2, axis=0)
    keypoints[1, 0, 0] += 1.0
    assert oks_nms(keypoints, [0.8, 0.9], [1e4, 1e4], 0.9) == [1]


def test_oks_nms_keeps_both_of_two_far_apart_poses_best_first():
    # 1000 px apart on area 10000: every e_j >= 10^6 / 0.214^2 / 10^4 / 2 = 1092, OKS = 0.
    assert oks_nms(far_apart(2), [0.8, 0.9], [1e4, 1e4], 0.9) == [1, 0]


@pytest.mark.parametrize("thr, kept", [(0.5, [0, 1]), (0.49, [0])])
def test_oks_nms_keeps_a_person_whose_oks_equals_thr(thr, kept):
    # Joint 0 agrees (exp(0) = 1), joint 1 is 1000 px off (exp(-10^4) = 0):
    # OKS = (1 + 0) / 2 = 0.5 exactly, kept at thr 0.5 (<=), removed at 0.49.
    keypoints = np.stack([two_joints((0, 0), (10, 0)), two_joints((0, 0), (1010, 0))])
    assert oks_nms(keypoints, [0.9, 0.8], [AREA, AREA], thr, sigmas=SIGMAS) == kept


def test_oks_nms_orders_tied_scores_as_argsort_reversed():
    # All far apart, so every person is kept in visiting order. On an array this
    # short NumPy's sort keeps equal scores in index order, [0, 2, 1, 3], so the
    # reversed order puts the later of two equal scores first: [3, 1, 2, 0].
    scores = np.array([0.5, 0.9, 0.5, 0.9])
    kept = oks_nms(far_apart(4), scores, np.full(4, 1e4), 0.9)
    assert kept == scores.argsort()[::-1].tolist()


def test_oks_nms_of_many_tied_people_follows_argsort_reversed():
    # 30 people (longer than NumPy's insertion-sort cutoff) with 3 distinct scores.
    scores = np.array([0.3, 0.7, 0.5] * 10)
    kept = oks_nms(far_apart(30, 2), scores, np.full(30, 1e4), 0.5, sigmas=SIGMAS)
    assert kept == scores.argsort()[::-1].tolist()


def test_oks_nms_a_suppressed_person_no_longer_suppresses_others():
    # A and B have identical poses (OKS 1), C is far from both (OKS 0):
    # A (0.9) removes B (0.8); C (0.7) stays.
    keypoints = far_apart(3)
    keypoints[1] = keypoints[0]
    assert oks_nms(keypoints, [0.9, 0.8, 0.7], np.full(3, 1e4), 0.9) == [0, 2]


def test_nms_of_no_people_keeps_nobody():
    empty = np.zeros((0, 17, 3))
    assert oks_nms(empty, np.zeros(0), np.zeros(0), 0.9) == []
    assert soft_oks_nms(empty, np.zeros(0), np.zeros(0), 0.9) == []


def test_nms_with_2d_keypoints_raises_naming_the_expected_n_j_3():
    with pytest.raises(ValueError, match=r"keypoints: expected shape \(N, J, 3\).*\(2, 17, 2\)"):
        oks_nms(np.zeros((2, 17, 2)), [0.9, 0.8], [1.0, 1.0], 0.9)


def test_nms_with_a_score_per_another_person_count_raises_naming_scores():
    with pytest.raises(ValueError, match=r"scores: expected shape \(N,\) = \(2,\).*\(3,\)"):
        soft_oks_nms(np.zeros((2, 17, 3)), [0.9, 0.8, 0.7], [1.0, 1.0], 0.9)


def test_nms_with_areas_of_another_shape_raises_naming_areas():
    with pytest.raises(ValueError, match=r"areas: expected shape \(N,\) = \(2,\).*\(2, 1\)"):
        oks_nms(np.zeros((2, 17, 3)), [0.9, 0.8], [[1.0], [1.0]], 0.9)


# --------------------------------------------------------------------------- soft_oks_nms


def three_people():
    """A (0.9) and B (0.8) share joint 0 with joint 1 1000 px apart: OKS 0.5.
    C is 5000 px from both: OKS 0 with each."""
    keypoints = np.stack([two_joints((0, 0), (10, 0)), two_joints((0, 0), (1010, 0)),
                          two_joints((5000, 5000), (5010, 5000))])
    return keypoints, np.full(3, AREA)


@pytest.mark.parametrize("c_score, kept", [(0.49, [0, 2, 1]), (0.45, [0, 1, 2])])
def test_soft_nms_rescales_by_exp_of_minus_oks_squared_over_thr(c_score, kept):
    # Keeping A lowers B to 0.8 * exp(-0.5^2 / 0.5) = 0.8 * e^-0.5 = 0.4852 and leaves
    # C (OKS 0) unchanged. C at 0.49 now comes before B; C at 0.45 still after.
    # (A linear 0.8 * (1 - 0.5) = 0.4 would put C at 0.45 first too.)
    keypoints, areas = three_people()
    assert soft_oks_nms(keypoints, [0.9, 0.8, c_score], areas, 0.5, sigmas=SIGMAS) == kept


def test_soft_nms_removes_nobody_where_hard_nms_keeps_score_order():
    # Hard NMS at 0.5 keeps B (OKS 0.5 <= 0.5) in plain score order: A, B, C.
    keypoints, areas = three_people()
    assert oks_nms(keypoints, [0.9, 0.8, 0.49], areas, 0.5, sigmas=SIGMAS) == [0, 1, 2]
    # Soft NMS keeps an identical pose too, only lower: B = 0.8 * exp(-1 / 0.5) = 0.108 < 0.49.
    keypoints[1] = keypoints[0]
    assert soft_oks_nms(keypoints, [0.9, 0.8, 0.49], areas, 0.5, sigmas=SIGMAS) == [0, 2, 1]


def test_soft_nms_stops_after_20_people():
    # 25 far-apart people scored 0/25, ..., 24/25: the 20 best, best first.
    scores = np.arange(25) / 25
    kept = soft_oks_nms(far_apart(25, 2), scores, np.full(25, AREA), 0.5, sigmas=SIGMAS)
    assert kept == list(range(24, 4, -1))


def test_soft_nms_with_thr_0_raises():
    with pytest.raises(ValueError, match="thr: soft OKS NMS divides by it"):
        soft_oks_nms(far_apart(2), [0.9, 0.8], [1e4, 1e4], 0.0)


# --------------------------------------------------------------------------- against a loop


def loop_oks(a, b, area_a, area_b, sigmas, in_vis_thre):
    """OKS as the semantics state it, one joint at a time."""
    terms = []
    for j in range(len(sigmas)):
        if in_vis_thre is not None and not b[j, 2] > in_vis_thre:
            continue
        d2 = (b[j, 0] - a[j, 0]) ** 2 + (b[j, 1] - a[j, 1]) ** 2
        e = d2 / (2 * sigmas[j]) ** 2 / ((area_a + area_b) / 2 + np.spacing(1)) / 2
        terms.append(math.exp(-e))
    return sum(terms) / len(terms) if terms else 0.0


def loop_nms(keypoints, scores, areas, thr, sigmas, in_vis_thre):
    """Visit best first; keep; drop the rest whose OKS with it is above thr."""
    order = scores.argsort()[::-1].tolist()
    kept = []
    while order:
        best = order.pop(0)
        kept.append(best)
        order = [i for i in order if loop_oks(keypoints[best], keypoints[i], areas[best], areas[i],
                                              sigmas, in_vis_thre) <= thr]
    return kept


def loop_soft_nms(keypoints, scores, areas, thr, sigmas, in_vis_thre):
    """Keep the best; scale the others by exp(-oks^2 / thr); re-sort; at most 20."""
    order = scores.argsort()[::-1].tolist()
    remaining = [scores[i] for i in order]
    kept = []
    while order and len(kept) < 20:
        best, order, remaining = order[0], order[1:], remaining[1:]
        kept.append(best)
        remaining = [s * math.exp(-loop_oks(keypoints[best], keypoints[i], areas[best], areas[i],
                                            sigmas, in_vis_thre) ** 2 / thr)
                     for s, i in zip(remaining, order, strict=True)]
        resort = np.array(remaining, np.float64).argsort()[::-1]
        order, remaining = [order[k] for k in resort], [remaining[k] for k in resort]
    return kept


def random_people(rng):
    """Up to 25 people around 3 centres (so OKS spans 0..1), scores with ties."""
    n, num_joints = int(rng.integers(1, 26)), int(rng.choice([2, 5, 17]))
    sigmas = COCO_SIGMAS if num_joints == 17 else rng.uniform(0.02, 0.1, num_joints)
    poses = rng.uniform(0, 100, (3, num_joints, 2)) + 300.0 * np.arange(3)[:, None, None]
    xy = poses[rng.integers(0, 3, n)] + rng.normal(0, rng.choice([1.0, 5.0, 20.0]), (n, num_joints, 2))
    keypoints = np.concatenate([xy, rng.uniform(0, 1, (n, num_joints, 1))], axis=-1)
    scores = rng.choice([0.2, 0.4, 0.6, 0.8], n)
    return keypoints, scores, rng.uniform(1000, 20000, n), sigmas


def test_oks_matches_a_joint_by_joint_loop_on_random_people():
    rng = np.random.default_rng(0)
    for _ in range(20):
        keypoints, _, areas, sigmas = random_people(rng)
        for in_vis_thre in (None, 0.3):
            expected = [loop_oks(keypoints[0], b, areas[0], ab, sigmas, in_vis_thre)
                        for b, ab in zip(keypoints, areas, strict=True)]
            got = oks_iou(keypoints[0], keypoints, areas[0], areas, sigmas, in_vis_thre)
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)


def test_oks_nms_and_soft_nms_match_loops_on_random_people_with_tied_scores():
    rng = np.random.default_rng(1)
    for _ in range(40):
        keypoints, scores, areas, sigmas = random_people(rng)
        for thr, in_vis_thre in ((0.3, None), (0.9, None), (0.5, 0.3)):
            args = (keypoints, scores, areas, thr, sigmas, in_vis_thre)
            assert oks_nms(*args) == loop_nms(*args)
            assert soft_oks_nms(*args) == loop_soft_nms(*args)


# --------------------------------------------------------------------------- rescore_by_keypoints


def with_joint_scores(joint_scores):
    """(N, J, 3) people at the origin with the given (N, J) joint scores."""
    joint_scores = np.asarray(joint_scores, np.float64)
    return np.concatenate([np.zeros(joint_scores.shape + (2,)), joint_scores[..., None]], axis=-1)


def test_rescore_is_the_mean_joint_score_above_the_threshold_times_the_box_score():
    # Above 0.2: 0.75, 0.5, 0.25 (0.125 is not): mean 1.5 / 3 = 0.5; x box 0.5 = 0.25.
    keypoints = with_joint_scores([[0.75, 0.5, 0.125, 0.25]])
    np.testing.assert_array_equal(rescore_by_keypoints(keypoints, [0.5], 0.2), [0.25])


def test_rescore_leaves_out_a_joint_scored_exactly_at_the_threshold():
    # 0.25 is not > 0.25: only 0.75 counts; x box 1 = 0.75 (with it: 0.5).
    keypoints = with_joint_scores([[0.75, 0.25]])
    np.testing.assert_array_equal(rescore_by_keypoints(keypoints, [1.0], 0.25), [0.75])


def test_rescore_with_no_joint_above_the_threshold_gives_0():
    # The reference's sum starts at 0 and is divided only by a nonzero count:
    # 0 x box 0.9 = 0 (not the box score, not NaN).
    keypoints = with_joint_scores([[0.1, 0.2], [0.5, 0.5]])
    np.testing.assert_array_equal(rescore_by_keypoints(keypoints, [0.9, 0.5], 0.2), [0.0, 0.25])


def test_rescore_of_float32_joint_scores_works_in_float64_as_the_reference_did():
    # The reference's NumPy 1 scalar loop promoted float32 scores to float64, so
    # float32(0.2) = 0.20000000298... is above the threshold 0.2 and counts alone:
    # mean float32(0.2), x box 1. (Compared in float32 it would equal 0.2 and give 0.)
    keypoints = with_joint_scores([[0.2, 0.0]]).astype(np.float32)
    scores = rescore_by_keypoints(keypoints, [1.0], 0.2)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, [float(np.float32(0.2))])


def test_rescore_with_a_box_score_per_another_person_count_raises_naming_box_scores():
    with pytest.raises(ValueError, match=r"box_scores: expected shape \(N,\) = \(1,\).*\(2,\)"):
        rescore_by_keypoints(with_joint_scores([[0.5, 0.5]]), [0.9, 0.8], 0.2)


# --------------------------------------------------------------------------- coco_evaluate

JOINT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
               "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
               "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]


def pose(x0, y0, w, h, v=2):
    """17 joints on a grid inside the box (columns w/5..4w/5, rows h/6..5h/6): 51 floats.
    The joints span 0.6 w by 2/3 h."""
    return [value for j in range(17)
            for value in (x0 + (j % 4 + 1) * w / 5, y0 + (j // 4 + 1) * h / 6, v)]


# Image 1: person 1 large (area 30000 > 96^2 = 9216), person 2 medium
# (32^2 = 1024 < 3000 < 9216); image 2: person 3 large (20000).
PEOPLE = [(1, 1, (10, 10, 150, 300), 30000.0), (2, 1, (300, 50, 40, 100), 3000.0),
          (3, 2, (50, 20, 120, 200), 20000.0)]


def gt_dataset(categories=None):
    return {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in (1, 2)],
        "annotations": [{"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                         "bbox": list(box), "area": area, "num_keypoints": 17,
                         "keypoints": pose(*box)}
                        for ann_id, image_id, box, area in PEOPLE],
        "categories": categories if categories is not None else [
            {"id": 1, "name": "person", "supercategory": "person", "keypoints": JOINT_NAMES,
             "skeleton": []}],
    }


@pytest.fixture
def gt_path(tmp_path):
    path = tmp_path / "person_keypoints_tiny.json"
    path.write_text(json.dumps(gt_dataset()))
    return str(path)


def perfect(people=PEOPLE):
    """The ground-truth joints as predictions (joint scores 1), person score 1."""
    return [{"image_id": image_id, "category_id": 1, "keypoints": pose(*box, v=1.0), "score": 1.0}
            for _, image_id, box, _ in people]


def test_perfect_predictions_score_1_under_all_ten_reference_names_in_order(gt_path):
    stats = coco_evaluate(perfect(), gt_path)
    assert isinstance(stats, collections.OrderedDict)
    assert list(stats) == ["AP", "Ap .5", "AP .75", "AP (M)", "AP (L)",
                           "AR", "AR .5", "AR .75", "AR (M)", "AR (L)"]
    assert all(isinstance(v, float) for v in stats.values())
    assert list(stats.values()) == pytest.approx([1.0] * 10, abs=1e-12)


def test_a_missed_person_lowers_recall_to_2_3_and_ap_to_67_of_101(gt_path):
    # Person 3 (image 2, large) gets no prediction; the other two are exact.
    # All areas: recall 2/3 at every OKS threshold -> AR = AR .5 = AR .75 = 2/3.
    # AP averages the best precision at recall >= r over r = 0.00, 0.01, ..., 1.00:
    # precision 1 up to recall 2/3, i.e. r = 0.00..0.66 (67 values), 0 above -> 67/101.
    # Large: persons 1 and 3, one found: AR (L) = 1/2, AP (L) = (r = 0.00..0.50) 51/101.
    # Medium: person 2, found: 1 and 1.
    stats = coco_evaluate(perfect(PEOPLE[:2]), gt_path)
    expected = {"AP": 67 / 101, "Ap .5": 67 / 101, "AP .75": 67 / 101, "AP (M)": 1.0, "AP (L)": 51 / 101,
                "AR": 2 / 3, "AR .5": 2 / 3, "AR .75": 2 / 3, "AR (M)": 1.0, "AR (L)": 0.5}
    assert dict(stats) == pytest.approx(expected, abs=1e-12)


def test_a_confident_false_positive_lowers_ap_to_3_4_but_not_ar(gt_path):
    # A copy of person 1's pose 1000 px away (OKS 0 with everyone), scored 2 > 1,
    # comes first: precision after each detection 0, 1/2, 2/3, 3/4 at recall
    # 0, 1/3, 2/3, 1; the best precision at recall >= r is 3/4 for every r.
    # Its joints span 90 x 200 = 18000 px^2 (large): among the large persons 1 and
    # 3 precision runs 0, 1/2, 2/3 -> AP (L) = 2/3; for medium it is ignored: AP (M) = 1.
    false_positive = {"image_id": 1, "category_id": 1, "score": 2.0,
                      "keypoints": pose(1010, 1010, 150, 300, v=1.0)}
    stats = coco_evaluate(perfect() + [false_positive], gt_path)
    assert stats["AP"] == pytest.approx(0.75, abs=1e-12)
    assert stats["Ap .5"] == stats["AP .75"] == pytest.approx(0.75, abs=1e-12)
    assert stats["AP (M)"] == pytest.approx(1.0, abs=1e-12)
    assert stats["AP (L)"] == pytest.approx(2 / 3, abs=1e-12)
    assert [stats[k] for k in ("AR", "AR .5", "AR .75", "AR (M)", "AR (L)")] == pytest.approx([1.0] * 5)


def test_results_and_gt_may_be_given_as_a_json_path_and_a_coco_object(gt_path, tmp_path, capsys):
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(perfect()))
    coco = COCO(gt_path)
    capsys.readouterr()
    stats = coco_evaluate(results_path, coco)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)


def test_evaluation_prints_nothing_unless_verbose(gt_path, capsys):
    coco_evaluate(perfect(), gt_path)
    assert capsys.readouterr().out == ""
    coco_evaluate(perfect(), gt_path, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_evaluation_leaves_the_callers_result_dicts_as_they_were(gt_path):
    results = perfect()
    coco_evaluate(results, gt_path)
    assert results == perfect()  # pycocotools' loadRes adds area, id and bbox to what it is given


def test_no_results_raise_instead_of_scoring_0(gt_path):
    with pytest.raises(ValueError, match="no detections; pycocotools cannot evaluate"):
        coco_evaluate([], gt_path)


def test_a_result_for_an_image_not_in_the_gt_raises_naming_the_id_and_the_gt_file(gt_path):
    results = perfect()
    results[2]["image_id"] = 999
    with pytest.raises(ValueError, match=rf"results\[2\]: image_id 999 is not an image of {gt_path}"):
        coco_evaluate(results, gt_path)


def test_a_result_with_keypoints_of_the_wrong_length_raises_naming_its_index(gt_path):
    results = perfect()
    results[1]["keypoints"] = results[1]["keypoints"][:-3]
    with pytest.raises(ValueError, match=r"results\[1\]: keypoints has 48 values, expected 3 \* J = 51"):
        coco_evaluate(results, gt_path)


def test_a_result_of_another_category_raises_naming_its_index(gt_path):
    results = perfect()
    results[0]["category_id"] = 2
    with pytest.raises(ValueError, match=r"results\[0\]: category_id 2, expected the person category 1"):
        coco_evaluate(results, gt_path)


def test_a_result_without_a_score_raises_naming_its_index(gt_path):
    results = perfect()
    del results[0]["score"]
    with pytest.raises(ValueError, match=r"results\[0\]: missing key\(s\) \['score'\]"):
        coco_evaluate(results, gt_path)


def test_gt_without_a_person_category_raises_naming_the_file(tmp_path):
    path = tmp_path / "dogs.json"
    path.write_text(json.dumps(gt_dataset([{"id": 1, "name": "dog", "keypoints": JOINT_NAMES}])))
    with pytest.raises(ValueError, match=rf"{path}: no 'person' category \(categories: \['dog'\]\)"):
        coco_evaluate(perfect(), str(path))


def test_gt_whose_person_category_has_no_keypoints_raises_naming_the_file(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt_dataset([{"id": 1, "name": "person", "supercategory": "person"}])))
    with pytest.raises(ValueError, match=rf"{path}: the 'person' category lists no 'keypoints'"):
        coco_evaluate(perfect(), str(path))


def test_gt_that_does_not_exist_raises_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        coco_evaluate(perfect(), str(tmp_path / "missing.json"))
