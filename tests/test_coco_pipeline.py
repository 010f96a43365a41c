"""COCO end to end on the generated COCO-format set: records, AP of known predictions on
ground-truth and detected boxes, training and scripts/test.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY_OVERRIDES
from hrnet_jax.config import get_config, override
from hrnet_jax.data import build_dataset, ensure_synthetic_coco, write_synthetic_coco
from hrnet_jax.data.synthetic_coco import DETECTIONS
from hrnet_jax.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_VALID = 16, 12
# A tiny W8 on 64x96 crops (width x height; sides must be multiples of 32), 17 joints.
COCO_TINY = (*TINY_OVERRIDES, "model.image_size=64,96", "model.heatmap_size=16,24",
             "workers=0")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_coco"))
    return ensure_synthetic_coco(root, num_train=NUM_TRAIN, num_valid=NUM_VALID, seed=0,
                                 image_size=(160, 128))


def coco_config(root, *extra):
    """The tiny model on the fixture's set (whose generation parameters it names, so that
    preparing the dataset finds the set made and leaves it)."""
    return override(get_config("hrnet_w8_coco"), [
        *COCO_TINY, "dataset.name=synthetic_coco", f"dataset.root={root}",
        f"dataset.synthetic_num_train={NUM_TRAIN}", f"dataset.synthetic_num_valid={NUM_VALID}",
        "dataset.synthetic_image_size=160,128", *extra])


def annotations(root, image_set="val2017"):
    with open(os.path.join(root, "annotations", f"person_keypoints_{image_set}.json")) as f:
        return json.load(f)


def test_the_generated_set_has_crowds_unlabelled_joints_and_hidden_joints(tmp_path):
    root = write_synthetic_coco(str(tmp_path), num_train=0, num_valid=40, seed=1,
                                image_size=(160, 128))
    anns = annotations(root)["annotations"]
    crowd = [a for a in anns if a["iscrowd"]]
    people = [np.reshape(a["keypoints"], (17, 3)) for a in anns if not a["iscrowd"]]
    assert crowd and all(a["num_keypoints"] == 0 and not any(a["keypoints"]) for a in crowd)
    v = np.stack(people)[..., 2]
    assert (v == 2).any() and (v == 1).any() and (v == 0).any()
    # Unlabelled joints are stored as COCO stores them: (0, 0, 0).
    assert np.all(np.stack(people)[v == 0][:, :2] == 0)
    for a in anns:
        assert a["num_keypoints"] == int(np.sum(np.reshape(a["keypoints"], (17, 3))[:, 2] > 0))


def test_the_generated_set_is_a_pure_function_of_its_seed(tmp_path):
    a = write_synthetic_coco(str(tmp_path / "a"), num_train=2, num_valid=3, seed=5,
                             image_size=(128, 96))
    b = write_synthetic_coco(str(tmp_path / "b"), num_train=2, num_valid=3, seed=5,
                             image_size=(128, 96))
    assert annotations(a) == annotations(b)
    with open(os.path.join(a, DETECTIONS)) as fa, open(os.path.join(b, DETECTIONS)) as fb:
        assert json.load(fa) == json.load(fb)


def test_rendering_in_several_processes_writes_the_same_files_as_one(tmp_path):
    one = write_synthetic_coco(str(tmp_path / "one"), num_train=3, num_valid=4, seed=5,
                               image_size=(128, 96), processes=1)
    two = write_synthetic_coco(str(tmp_path / "two"), num_train=3, num_valid=4, seed=5,
                               image_size=(128, 96), processes=2)
    files = sorted(os.path.relpath(os.path.join(d, f), one)
                   for d, _, names in os.walk(one) for f in names)
    assert len([f for f in files if f.endswith(".jpg")]) == 7
    for name in files:
        with open(os.path.join(one, name), "rb") as fa, open(os.path.join(two, name), "rb") as fb:
            assert fa.read() == fb.read(), name


def _gt_people(root):
    """image id -> list of (keypoints (17, 3), bbox) of labelled, non-crowd people."""
    people = {}
    for a in annotations(root)["annotations"]:
        if not a["iscrowd"] and a["num_keypoints"] > 0:
            people.setdefault(a["image_id"], []).append(
                (np.reshape(a["keypoints"], (17, 3)).astype(np.float64), a["bbox"]))
    return people


def test_perfect_predictions_on_the_ground_truth_boxes_score_ap_1(coco_root):
    dataset = build_dataset(coco_config(coco_root), "valid")
    assert dataset.headline_metric == "AP"
    preds = np.stack([np.concatenate([r["joints_3d"][:, :2], np.ones((17, 1))], axis=1)
                      for r in dataset.db])
    table = dataset.evaluate(preds)
    assert list(table)[:3] == ["AP", "Ap .5", "AP .75"]
    assert table["AP"] == pytest.approx(1.0) and table["AR"] == pytest.approx(1.0)


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def test_detected_boxes_are_rescored_nmsed_and_scored_as_the_reference(coco_root, tmp_path):
    """An oracle on the detections: a box over a person predicts that person's joints with
    score 1, any other box joints scoring 0.1 (below in_vis_thre 0.2, so its person score is
    0). Duplicate boxes of one person then have OKS 1 > 0.9 and NMS keeps one, the false
    positives rank last, and AP is exactly 1."""
    cfg = coco_config(coco_root, "test.use_gt_bbox=false")
    dataset = build_dataset(cfg, "valid")
    with open(os.path.join(coco_root, DETECTIONS)) as f:
        detections = json.load(f)
    assert len(dataset) == len(detections)
    people = _gt_people(coco_root)
    preds, matched = [], []
    for record, det in zip(dataset.db, detections, strict=True):
        assert record["score"] == det["score"]
        best = max(people.get(det["image_id"], []), key=lambda p: _iou(p[1], det["bbox"]),
                   default=None)
        if best is not None and _iou(best[1], det["bbox"]) > 0.5:
            preds.append(np.concatenate([best[0][:, :2], np.ones((17, 1))], axis=1))
            matched.append(True)
        else:
            preds.append(np.concatenate([np.full((17, 2), 5.0), np.full((17, 1), 0.1)], axis=1))
            matched.append(False)
    assert not all(matched) and sum(matched) > sum(len(p) for p in people.values())  # duplicates
    table = dataset.evaluate(np.stack(preds), output_dir=str(tmp_path))
    assert table["AP"] == pytest.approx(1.0)
    with open(dataset.results_path(str(tmp_path))) as f:
        results = json.load(f)
    # One result per labelled person: its duplicate boxes were suppressed. (The false
    # positives, all predicting the same joints, suppress each other within an image.)
    kept_people = [r for r in results if r["score"] > 0]
    assert len(kept_people) == sum(len(p) for p in people.values())
    assert 0 < len(results) - len(kept_people) <= matched.count(False)


def test_training_and_testing_on_the_coco_format_set(coco_root, tmp_path):
    workdir = str(tmp_path / "run")
    cfg = coco_config(coco_root, "train.batch_size_per_device=4", "test.batch_size_per_device=4",
                      "train.end_epoch=1", "print_freq=2")
    result = train(cfg, workdir, show_progress=False)
    assert result.last_evaluation.headline == "AP"
    assert 0.0 <= result.last_evaluation.score <= 1.0
    assert os.path.isfile(os.path.join(workdir, "results", "keypoints_val2017_results_0.json"))
    with open(os.path.join(workdir, "train.log")) as f:
        log = f.read()
    assert "| Arch | AP | Ap .5 |" in log and "best so far: AP" in log

    base = [sys.executable, os.path.join(REPO, "scripts", "test.py"), "--config", "hrnet_w8_coco",
            "--dataset", "synthetic_coco", "--checkpoint", workdir, "--data-root", coco_root,
            "--no-progress", "--batch-size", "4"]
    for extra, boxes in ((["--gt-boxes"], "ground truth"),
                         (["--detections", os.path.join(coco_root, DETECTIONS),
                           "--decode", "dark"], os.path.join(coco_root, DETECTIONS))):
        out = str(tmp_path / f"test_{len(extra)}")
        proc = subprocess.run([*base, "--out", out, *extra], capture_output=True, text=True,
                              cwd=REPO, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "| Arch | AP | Ap .5 | AP .75 | AP (M) | AP (L) | AR |" in proc.stdout
        with open(os.path.join(out, "results.json")) as f:
            info = json.load(f)
        assert info["headline"] == "AP" and info["boxes"] == boxes
        assert os.path.isfile(os.path.join(out, "results", "keypoints_val2017_results_0.json"))


def test_train_script_without_coco_says_where_it_goes_and_suggests_synthetic_coco(tmp_path):
    missing = str(tmp_path / "no_coco")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config", "hrnet_w32_coco",
         "--data-root", missing, "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert missing in proc.stderr and "person_keypoints_" in proc.stderr
    assert "--dataset synthetic_coco" in proc.stderr
