"""The COCO keypoints dataset: its records, detected boxes and COCO AP, from tiny hand-made files.

Records follow the reference (leoxiaobin/deep-high-resolution-net.pytorch,
lib/dataset/coco.py). A box (x, y, w, h) is cleaned to x1 = max(0, x),
y1 = max(0, y), x2 = min(W - 1, x1 + max(0, w - 1)), y2 = min(H - 1, y1 +
max(0, h - 1)) and kept as (x1, y1, x2 - x1, y2 - y1) when x2 >= x1 and
y2 >= y1. A person record needs a non-crowd person annotation with some
nonzero keypoint, area > 0 and a box that survives cleaning; its joints keep
(x, y), its visibility is min(1, v) in columns 0 and 1, and its centre and
scale are those of the cleaned box fitted to the input's aspect ratio and
padded 1.25x. Detected boxes give one record per person box scoring at least
test.image_thre, with zero joints of visibility one and the detector's score.

Evaluation rescores each person by box score x the mean of its joint scores
above test.in_vis_thre, removes per image the people whose OKS with a better
one exceeds test.oks_thre, writes OUTPUT/results/keypoints_<set>_results_0.json
and scores it with pycocotools. Expected values below are worked by hand.

The hrnet_w32_coco input is 192 x 256 (width x height): aspect ratio 0.75.
"""

import json
import logging
import os

import numpy as np
import pytest

from hrnet_jax.config import get_config, override
from hrnet_jax.crop import box_to_center_scale
from hrnet_jax.data.coco import COCODataset, clean_box
from hrnet_jax.metrics import coco_evaluate

COCO_JOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]
PERSON = {"id": 1, "name": "person", "supercategory": "person", "keypoints": COCO_JOINT_NAMES,
          "skeleton": []}
DOG = {"id": 18, "name": "dog", "supercategory": "animal"}
DETECTIONS = os.path.join("person_detection_results", "COCO_val2017_detections_AP_H_56_person.json")


def pose(x0, y0, v=2):
    """(17, 3) joints (x0 + 3k, y0 + 4k, v) for joint k: every joint distinct, inside a 100 px box."""
    k = np.arange(17, dtype=np.float64)
    return np.stack([x0 + 3 * k, y0 + 4 * k, np.full(17, float(v))], axis=-1)


def person(ann_id, image_id, bbox, joints, *, area=None, iscrowd=0, category_id=1):
    """A COCO annotation; ``joints`` (17, 3) as (x, y, v) or a flat list."""
    flat = np.asarray(joints, dtype=np.float64).reshape(-1).tolist()
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
            "bbox": list(bbox), "area": float(bbox[2] * bbox[3]) if area is None else area,
            "keypoints": flat, "num_keypoints": int(sum(v > 0 for v in flat[2::3]))}


def image(image_id, width=640, height=480):
    return {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height}


def write_coco(root, images, annotations, categories=(PERSON,), image_set="val2017"):
    """Writes ROOT/annotations/person_keypoints_<set>.json; returns its path."""
    path = root / "annotations" / f"person_keypoints_{image_set}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations),
                                "categories": list(categories)}))
    return str(path)


def write_detections(path, detections):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(detections)))
    return str(path)


def detection(image_id, bbox, score, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def coco_config(root, **test):
    """hrnet_w32_coco on ``root``, with ``test.<key>`` overrides."""
    return override(get_config("hrnet_w32_coco"),
                    {"dataset.root": str(root), **{f"test.{k}": v for k, v in test.items()}})


def dataset(root, **test):
    return COCODataset(str(root), "val2017", False, coco_config(root, **test))


def perfect(ds, annotations, score=1.0):
    """(N, 17, 3) predictions: each record's annotated joints, every joint scored ``score``."""
    by_image = {a["image_id"]: np.asarray(a["keypoints"]).reshape(17, 3) for a in annotations}
    preds = np.stack([by_image[r["image_id"]] for r in ds.db]).copy()
    preds[..., 2] = score
    return preds


# --------------------------------------------------------------------------- clean_box
# Image 100 px wide (W - 1 = 99), 80 px high (H - 1 = 79).


def test_a_box_inside_the_image_loses_one_pixel_of_width_and_height():
    # x2 = min(99, 10 + 29) = 39, y2 = min(79, 20 + 39) = 59.
    assert clean_box((10, 20, 30, 40), 100, 80) == (10, 20, 29, 39)


def test_a_box_hanging_off_the_left_and_top_is_moved_inside_keeping_its_size():
    # x1 = y1 = 0; x2 = min(99, 0 + 29) = 29, y2 = min(79, 0 + 39) = 39.
    assert clean_box((-5, -10, 30, 40), 100, 80) == (0, 0, 29, 39)


def test_a_box_hanging_off_the_right_and_bottom_is_cut_at_the_last_pixel():
    # x2 = min(99, 90 + 29) = 99, y2 = min(79, 70 + 39) = 79.
    assert clean_box((90, 70, 30, 40), 100, 80) == (90, 70, 9, 9)


def test_a_zero_width_box_is_kept_with_width_zero():
    # x2 = 10 + max(0, -1) = 10 = x1.
    assert clean_box((10, 20, 0, 40), 100, 80) == (10, 20, 0, 39)


def test_a_box_entirely_right_of_the_image_cleans_away():
    # x1 = 120 > x2 = min(99, 149) = 99.
    assert clean_box((120, 20, 30, 40), 100, 80) is None


def test_a_box_entirely_below_the_image_cleans_away():
    assert clean_box((10, 90, 30, 40), 100, 80) is None


# --------------------------------------------------------------------------- person records


def test_crowd_other_category_empty_zero_area_and_cleaned_away_annotations_give_no_record(tmp_path):
    keep = person(1, 7, (10, 20, 50, 90), pose(20, 30))
    write_coco(tmp_path, [image(7)], [
        person(2, 7, (10, 20, 50, 90), pose(20, 30), iscrowd=1),
        person(3, 7, (10, 20, 50, 90), pose(20, 30), category_id=DOG["id"]),
        person(4, 7, (10, 20, 50, 90), np.zeros((17, 3))),
        person(5, 7, (10, 20, 50, 90), pose(20, 30), area=0.0),
        person(6, 7, (700, 20, 50, 90), pose(20, 30)),  # x1 = 700 > W - 1 = 639
        keep,
    ], categories=(PERSON, DOG))
    ds = dataset(tmp_path)
    assert len(ds.db) == 1
    np.testing.assert_array_equal(ds.db[0]["joints_3d"][:, :2], pose(20, 30)[:, :2])


@pytest.mark.parametrize("skipped", ["crowd", "dog", "zero_keypoints", "zero_area", "off_image"])
def test_each_skip_rule_alone_removes_its_annotation(tmp_path, skipped):
    bad = {
        "crowd": person(2, 7, (10, 20, 50, 90), pose(60, 30), iscrowd=1),
        "dog": person(2, 7, (10, 20, 50, 90), pose(60, 30), category_id=DOG["id"]),
        "zero_keypoints": person(2, 7, (10, 20, 50, 90), np.zeros((17, 3))),
        "zero_area": person(2, 7, (10, 20, 50, 90), pose(60, 30), area=0.0),
        "off_image": person(2, 7, (10, 500, 50, 90), pose(60, 30)),  # y1 = 500 > H - 1 = 479
    }[skipped]
    write_coco(tmp_path, [image(7)], [bad, person(1, 7, (10, 20, 50, 90), pose(20, 30))],
               categories=(PERSON, DOG))
    ds = dataset(tmp_path)
    assert len(ds.db) == 1
    assert ds.db[0]["joints_3d"][0, 0] == 20.0


def test_visibility_is_min_1_v_in_columns_0_and_1_and_joints_keep_x_and_y(tmp_path):
    joints = pose(20, 30)
    joints[1, 2] = 1  # labelled, not visible
    joints[2] = (0, 0, 0)  # not labelled
    write_coco(tmp_path, [image(7)], [person(1, 7, (10, 20, 50, 90), joints)])
    record = dataset(tmp_path).db[0]
    vis = record["joints_3d_vis"]
    np.testing.assert_array_equal(vis[:3], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])  # v = 2, 1, 0
    np.testing.assert_array_equal(vis[3:], np.tile([1.0, 1.0, 0.0], (14, 1)))
    # x, y as annotated (joint 1 at (23, 34), joint 2 at (0, 0)); column 2 zero.
    np.testing.assert_array_equal(record["joints_3d"][:, :2], joints[:, :2])
    np.testing.assert_array_equal(record["joints_3d"][:, 2], np.zeros(17))
    assert record["joints_3d"].shape == (17, 3) and vis.shape == (17, 3)


def test_centre_and_scale_are_the_cleaned_box_fitted_to_3_by_4_and_padded_1_25(tmp_path):
    # bbox (10, 20, 41, 41) cleans to x2 = 10 + 40 = 50, y2 = 20 + 40 = 60: (10, 20, 40, 40).
    # Centre (10 + 20, 20 + 20) = (30, 40). w = 40 > 0.75 * 40 = 30, so h = 40 / 0.75 = 53.333;
    # scale = (40, 53.333) / 200 * 1.25 = (0.25, 0.33333).
    write_coco(tmp_path, [image(7, 100, 80)], [person(1, 7, (10, 20, 41, 41), pose(12, 22))])
    record = dataset(tmp_path).db[0]
    np.testing.assert_allclose(record["center"], [30.0, 40.0], rtol=1e-6)
    np.testing.assert_allclose(record["scale"], [0.25, 40 / 0.75 / 200 * 1.25], rtol=1e-6)
    center, scale = box_to_center_scale([[10, 20, 40, 40]], (192, 256))
    np.testing.assert_array_equal(record["center"], center[0])
    np.testing.assert_array_equal(record["scale"], scale[0])


def test_a_tall_box_is_widened_to_3_by_4(tmp_path):
    # bbox (100, 50, 61, 121) cleans to (100, 50, 60, 120): centre (130, 110);
    # w = 60 < 0.75 * 120 = 90, so w = 90: scale (90, 120) / 200 * 1.25 = (0.5625, 0.75).
    write_coco(tmp_path, [image(7)], [person(1, 7, (100, 50, 61, 121), pose(110, 60))])
    record = dataset(tmp_path).db[0]
    np.testing.assert_allclose(record["center"], [130.0, 110.0], rtol=1e-6)
    np.testing.assert_allclose(record["scale"], [0.5625, 0.75], rtol=1e-6)


def test_records_follow_the_images_order_then_the_annotations_order_with_the_image_path(tmp_path):
    # Image 397133 is listed first although its id is larger; its annotation comes last.
    write_coco(tmp_path, [image(397133), image(42)], [
        person(1, 42, (10, 20, 50, 90), pose(1, 30)),
        person(2, 42, (10, 20, 50, 90), pose(2, 30)),
        person(3, 397133, (10, 20, 50, 90), pose(3, 30)),
    ])
    db = dataset(tmp_path).db
    assert [r["image_id"] for r in db] == [397133, 42, 42]
    assert [r["joints_3d"][0, 0] for r in db] == [3.0, 1.0, 2.0]
    assert db[0]["image"] == os.path.join(str(tmp_path), "images", "val2017", "000000397133.jpg")
    assert db[1]["image"] == os.path.join(str(tmp_path), "images", "val2017", "000000000042.jpg")


# --------------------------------------------------------------------------- errors


def test_an_annotation_with_48_keypoint_values_is_an_error_naming_the_file_and_the_annotation(tmp_path):
    path = write_coco(tmp_path, [image(7)],
                      [person(1, 7, (10, 20, 50, 90), pose(20, 30)),
                       person(31337, 7, (10, 20, 50, 90), pose(20, 30)[:16])])
    with pytest.raises(ValueError) as info:
        dataset(tmp_path)
    message = str(info.value)
    assert path in message and "31337" in message
    assert "48" in message and "51" in message


def test_a_file_without_the_person_category_is_an_error_naming_the_file(tmp_path):
    path = write_coco(tmp_path, [image(7)], [person(1, 7, (10, 20, 50, 90), pose(20, 30),
                                                    category_id=DOG["id"])], categories=(DOG,))
    with pytest.raises(ValueError, match="person") as info:
        dataset(tmp_path)
    assert path in str(info.value)


def test_a_missing_annotation_file_shows_the_layout_and_suggests_the_synthetic_set(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        dataset(tmp_path)
    message = str(info.value)
    assert os.path.join(str(tmp_path), "annotations", "person_keypoints_val2017.json") in message
    assert "annotations/person_keypoints_{train2017,val2017}.json" in message
    assert "images/{train2017,val2017}/" in message
    assert "--dataset synthetic_coco" in message


# --------------------------------------------------------------------------- detected boxes


@pytest.fixture
def propagating_logs(monkeypatch):
    # The training logger stops hrnet_jax records at "hrnet_jax"; caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("hrnet_jax"), "propagate", True)


def test_detected_boxes_keep_category_1_above_image_thre_in_file_order(tmp_path, caplog, propagating_logs):
    write_coco(tmp_path, [image(42), image(397133)], [person(1, 42, (10, 20, 50, 90), pose(20, 30))])
    boxes = write_detections(tmp_path / "boxes.json", [
        detection(42, (10, 20, 40, 40), 0.9),
        detection(42, (10, 20, 40, 40), 0.95, category_id=2),  # not a person
        detection(42, (10, 20, 40, 40), 0.05),  # below image_thre 0.1
        detection(999, (10, 20, 40, 40), 0.8),  # no such image
        detection(1000, (10, 20, 40, 40), 0.8),  # no such image
        detection(397133, (100, 50, 60, 120), 0.1),  # == image_thre: kept
    ])
    with caplog.at_level(logging.WARNING, logger="hrnet_jax.data.coco"):
        db = dataset(tmp_path, use_gt_bbox=False, coco_bbox_file=boxes, image_thre=0.1).db
    assert [r["image_id"] for r in db] == [42, 397133]
    assert [r["score"] for r in db] == [0.9, 0.1]
    assert db[1]["image"] == os.path.join(str(tmp_path), "images", "val2017", "000000397133.jpg")
    # The detected box is not cleaned: (10, 20, 40, 40) -> centre (30, 40),
    # scale (40, 40 / 0.75) / 200 * 1.25 = (0.25, 0.33333); (100, 50, 60, 120) ->
    # centre (130, 110), scale (90, 120) / 200 * 1.25 = (0.5625, 0.75).
    np.testing.assert_allclose([r["center"] for r in db], [[30, 40], [130, 110]], rtol=1e-6)
    np.testing.assert_allclose([r["scale"] for r in db], [[0.25, 1 / 3], [0.5625, 0.75]], rtol=1e-6)
    for r in db:
        np.testing.assert_array_equal(r["joints_3d"], np.zeros((17, 3)))
        np.testing.assert_array_equal(r["joints_3d_vis"], np.ones((17, 3)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 detection" in warnings[0] and boxes in warnings[0]


def test_an_empty_detection_list_is_an_error_naming_the_file(tmp_path):
    write_coco(tmp_path, [image(42)], [person(1, 42, (10, 20, 50, 90), pose(20, 30))])
    boxes = write_detections(tmp_path / "boxes.json", [])
    with pytest.raises(ValueError) as info:
        dataset(tmp_path, use_gt_bbox=False, coco_bbox_file=boxes)
    assert boxes in str(info.value)


def test_a_relative_detection_file_is_found_under_the_dataset_root(tmp_path, monkeypatch):
    root = tmp_path / "coco"
    write_coco(root, [image(42)], [person(1, 42, (10, 20, 50, 90), pose(20, 30))])
    write_detections(root / DETECTIONS, [detection(42, (10, 20, 40, 40), 0.75)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = coco_config(root, use_gt_bbox=False)
    assert cfg.test.coco_bbox_file == DETECTIONS  # the preset's relative path
    db = COCODataset(str(root), "val2017", False, cfg).db
    assert [(r["image_id"], r["score"]) for r in db] == [(42, 0.75)]


# --------------------------------------------------------------------------- evaluate
# Two 640 x 480 images with one fully visible person each.

GT = [person(1, 1, (20, 30, 100, 200), pose(40, 50)),
      person(2, 2, (200, 100, 100, 200), pose(220, 120))]


def test_perfect_predictions_on_ground_truth_boxes_score_ap_1_and_are_written_as_results(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, [image(1), image(2)], GT)
    ds = dataset(root)
    preds = perfect(ds, GT)
    table = ds.evaluate(preds, str(tmp_path / "out"))
    assert table["AP"] == pytest.approx(1.0)
    with open(tmp_path / "out" / "results" / "keypoints_val2017_results_0.json") as f:
        results = json.load(f)
    assert [(r["image_id"], r["category_id"], r["score"]) for r in results] == [(1, 1, 1.0), (2, 1, 1.0)]
    np.testing.assert_allclose(results[0]["keypoints"], preds[0].reshape(-1))


def test_a_lower_scored_duplicate_of_a_person_is_removed_by_oks_nms_and_costs_no_ap(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, [image(1), image(2)], GT)
    boxes = write_detections(tmp_path / "boxes.json", [
        detection(1, (20, 30, 100, 200), 0.9),
        detection(1, (25, 35, 95, 190), 0.8),  # the same person again: identical joints, OKS 1 > 0.9
        detection(2, (200, 100, 100, 200), 0.7),
    ])
    ds = dataset(root, use_gt_bbox=False, coco_bbox_file=boxes)
    preds = perfect(ds, GT)  # joint scores 1: each person's score is its box score
    table = ds.evaluate(preds, str(tmp_path / "out"))
    with open(tmp_path / "out" / "results" / "keypoints_val2017_results_0.json") as f:
        results = json.load(f)
    assert [(r["image_id"], r["score"]) for r in results] == [(1, 0.9), (2, 0.7)]
    assert table["AP"] == pytest.approx(1.0)
    # Kept, the duplicate would rank second as a false positive: precision 1 up to
    # recall 0.5, then 2/3 at recall 1, so AP = (51 * 1 + 50 * 2/3) / 101 recall points.
    kept = [{"image_id": r["image_id"], "category_id": 1, "keypoints": p.reshape(-1).tolist(),
             "score": r["score"]} for r, p in zip(ds.db, preds, strict=True)]
    assert coco_evaluate(kept, ds.describe())["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_a_persons_score_is_its_box_score_times_the_mean_joint_score_above_in_vis_thre(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, [image(1), image(2)], GT)
    boxes = write_detections(tmp_path / "boxes.json", [detection(1, (20, 30, 100, 200), 0.8)])
    ds = dataset(root, use_gt_bbox=False, coco_bbox_file=boxes)
    preds = perfect(ds, GT)
    # Joint scores: four 0.9, four 0.5, one 0.2 (not above 0.2), eight 0.1.
    preds[0, :, 2] = [0.9] * 4 + [0.5] * 4 + [0.2] + [0.1] * 8
    ds.evaluate(preds, str(tmp_path / "out"))
    with open(tmp_path / "out" / "results" / "keypoints_val2017_results_0.json") as f:
        (result,) = json.load(f)
    # (4 * 0.9 + 4 * 0.5) / 8 = 0.7; 0.8 * 0.7 = 0.56.
    assert result["score"] == pytest.approx(0.56)
