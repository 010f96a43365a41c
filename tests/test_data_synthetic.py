"""The synthetic MPII-format set: layout, readability, evaluation, determinism and caching."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from hrnet_jax.config import get_config, override
from hrnet_jax.data import MPIIDataset, ensure_synthetic_mpii, load_records, write_synthetic_mpii
from hrnet_jax.data.synthetic import render_sample
from hrnet_jax.metrics import mpii_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("syn") / "set")
    return ensure_synthetic_mpii(path, num_train=12, num_valid=8, seed=3, image_size=(96, 80))


def test_the_set_has_the_mpii_layout_and_gt_valid_mat_keys_and_shapes(root):
    for name in ("train.json", "valid.json", "test.json", "gt_valid.mat"):
        assert os.path.isfile(os.path.join(root, "annot", name)), name
    assert len(os.listdir(os.path.join(root, "images"))) == 20
    gt = scipy.io.loadmat(os.path.join(root, "annot", "gt_valid.mat"))
    assert gt["jnt_missing"].shape == (16, 8)
    assert gt["pos_gt_src"].shape == (16, 2, 8)
    assert gt["headboxes_src"].shape == (2, 2, 8)
    with open(os.path.join(root, "annot", "valid.json")) as f:
        valid = json.load(f)
    for k, rec in enumerate(valid):
        assert len(rec["joints"]) == 16 and len(rec["joints_vis"]) == 16
        np.testing.assert_array_equal(gt["jnt_missing"][:, k], 1 - np.array(rec["joints_vis"]))
        seen = np.array(rec["joints_vis"]) > 0
        np.testing.assert_allclose(gt["pos_gt_src"][seen, :, k], np.array(rec["joints"])[seen])
    with open(os.path.join(root, "annot", "test.json")) as f:
        assert all(set(r) == {"image", "center", "scale"} for r in json.load(f))


def test_perfect_predictions_score_100_pckh_with_the_mpii_evaluation(root):
    records = load_records(root, "valid")
    preds = np.stack([r["joints_3d"][:, :2] for r in records])  # 0-based, as a model predicts
    results = mpii_evaluate(preds, os.path.join(root, "annot", "gt_valid.mat"))
    assert results["Mean"] == pytest.approx(100.0)
    shifted = mpii_evaluate(preds + 40.0, os.path.join(root, "annot", "gt_valid.mat"))
    assert shifted["Mean"] < 50.0


def test_every_visible_joint_is_in_the_image_and_inside_the_reader_box(root):
    cfg = override(get_config("hrnet_quickstart"), [f"dataset.root={root}"])
    ds = MPIIDataset(root, "valid", False, cfg)
    for i in range(len(ds)):
        rec = ds.db[i]
        vis = rec["joints_3d_vis"][:, 0] > 0
        assert vis.sum() >= 6
        xy = rec["joints_3d"][vis, :2]
        assert ((xy >= 0) & (xy <= [95, 79])).all()
        half = rec["scale"][0] * 200 / 2
        assert (np.abs(xy - rec["center"]) <= half).all()
        _, target, weight, _ = ds[i]
        assert weight.sum() >= 6 and target.max() == 1.0


def test_visible_joints_lie_on_the_drawn_figure():
    for seed in range(8):
        image, ann = render_sample(np.random.default_rng(seed), 128, 96, with_mask=True)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        assert ann["visible"].sum() >= 6
        for (x, y), v in zip(ann["joints"], ann["visible"], strict=True):
            if v:
                assert ann["person_mask"][int(round(y)), int(round(x))], (seed, x, y)
        # The head box is square around the head, its side the neck-to-top length.
        (x1, y1), (x2, y2) = ann["headbox"]
        assert x2 - x1 == pytest.approx(np.hypot(*(ann["joints"][9] - ann["joints"][8])))


def test_the_same_seed_gives_the_same_files_and_another_seed_does_not(tmp_path):
    a = write_synthetic_mpii(str(tmp_path / "a"), num_train=3, num_valid=2, seed=5, image_size=64)
    b = write_synthetic_mpii(str(tmp_path / "b"), num_train=3, num_valid=2, seed=5, image_size=64)
    c = write_synthetic_mpii(str(tmp_path / "c"), num_train=3, num_valid=2, seed=6, image_size=64)
    read = lambda r, p: open(os.path.join(r, p), "rb").read()  # noqa: E731
    for p in ("annot/train.json", "annot/valid.json", "images/train_000002.jpg"):
        assert read(a, p) == read(b, p)
    assert read(a, "annot/train.json") != read(c, "annot/train.json")


def test_rendering_in_several_processes_writes_the_same_files_as_one(tmp_path):
    a = write_synthetic_mpii(str(tmp_path / "a"), num_train=5, num_valid=3, seed=2, image_size=48,
                             processes=1)
    b = write_synthetic_mpii(str(tmp_path / "b"), num_train=5, num_valid=3, seed=2, image_size=48,
                             processes=2)
    read = lambda r, p: open(os.path.join(r, p), "rb").read()  # noqa: E731
    for p in ("annot/train.json", "annot/valid.json", "annot/test.json",
              *(f"images/{f}" for f in sorted(os.listdir(os.path.join(a, "images"))))):
        assert read(a, p) == read(b, p), p
    assert len(os.listdir(os.path.join(b, "images"))) == 8
    gt_a, gt_b = (scipy.io.loadmat(os.path.join(r, "annot", "gt_valid.mat")) for r in (a, b))
    for key in ("jnt_missing", "pos_gt_src", "headboxes_src"):
        np.testing.assert_array_equal(gt_a[key], gt_b[key])


def test_ensure_generates_once_then_reuses_and_redoes_a_killed_generation(tmp_path):
    root = str(tmp_path / "cache")
    ensure_synthetic_mpii(root, num_train=2, num_valid=1, seed=0, image_size=48)
    stamp = os.path.getmtime(os.path.join(root, "annot", "train.json"))
    os.utime(os.path.join(root, "annot", "train.json"), (stamp - 100, stamp - 100))
    ensure_synthetic_mpii(root, num_train=2, num_valid=1, seed=0, image_size=48)
    assert os.path.getmtime(os.path.join(root, "annot", "train.json")) == stamp - 100
    # A generation killed before its marker: half-written files are replaced.
    os.remove(os.path.join(root, ".synthetic_complete.json"))
    open(os.path.join(root, ".synthetic_partial"), "w").close()
    os.remove(os.path.join(root, "annot", "valid.json"))
    ensure_synthetic_mpii(root, num_train=2, num_valid=1, seed=0, image_size=48)
    assert os.path.isfile(os.path.join(root, "annot", "valid.json"))
    # Other parameters regenerate.
    ensure_synthetic_mpii(root, num_train=3, num_valid=1, seed=0, image_size=48)
    assert len(load_records(root, "train")) == 3


def test_ensure_refuses_to_overwrite_a_directory_it_did_not_make(tmp_path):
    os.makedirs(tmp_path / "mpii" / "images")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        ensure_synthetic_mpii(str(tmp_path / "mpii"), num_train=1, num_valid=1)
    assert os.path.isdir(tmp_path / "mpii" / "images")


def test_the_script_writes_a_1280x720_set_the_reader_accepts(tmp_path):
    out = str(tmp_path / "wide")
    env = dict(os.environ, PYTHONPATH=REPO)
    run = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_synthetic_mpii.py"),
                          "--out", out, "--num-train", "2", "--num-valid", "1", "--seed", "1",
                          "--image-size", "1280x720"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    import cv2

    assert cv2.imread(os.path.join(out, "images", "train_000000.jpg")).shape == (720, 1280, 3)
    assert len(load_records(out, "valid")) == 1
