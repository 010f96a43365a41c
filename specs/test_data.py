"""The MPII data pipeline.

Contract: ``input, target, target_weight, meta = next(iter(train_loader))``
gives (B, 3, H, W), (B, J, h, w) and (B, J, 1) float32 arrays and a meta dict
of arrays with keys image, filename, imgnum, joints, joints_vis, center,
scale, rotation, score, plus index and valid. With the hrnet_w32 MPII config
and batch 48 that is (48, 3, 256, 256), (48, 16, 64, 64), (48, 16, 1).

Records convert as the reference: if center x != -1, center y += 15 * scale
and scale *= 1.25; then center and joints lose 1 (MATLAB is 1-based); scale
becomes (s, s); joints_3d_vis repeats the visibility in columns 0 and 1; the
test split has no joints. Expected values below are worked by hand.
"""

import json
import os

import numpy as np
import pytest

from hrnet_jax.config import get_config, override
from hrnet_jax.data import build_loader, convert_record, ensure_synthetic_mpii, load_records, mpii_gt_path

META_KEYS = {"image", "filename", "imgnum", "joints", "joints_vis", "center", "scale", "rotation",
             "score", "index", "valid"}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mpii") / "synthetic")
    return ensure_synthetic_mpii(root, num_train=50, num_valid=10, seed=0, image_size=96)


def test_a_training_batch_of_48_has_the_documented_shapes_and_meta_keys(synthetic_root):
    cfg = override(get_config("hrnet_w32"), [f"dataset.root={synthetic_root}"])
    with build_loader(cfg, "train", batch_size=48, shuffle=True, workers=0) as loader:
        input_, target, target_weight, meta = next(iter(loader))
    assert input_.shape == (48, 3, 256, 256) and input_.dtype == np.float32
    assert target.shape == (48, 16, 64, 64) and target.dtype == np.float32
    assert target_weight.shape == (48, 16, 1) and target_weight.dtype == np.float32
    assert set(meta) == META_KEYS
    assert meta["joints"].shape == (48, 16, 3) and meta["joints_vis"].shape == (48, 16, 3)
    assert meta["center"].shape == (48, 2) and meta["scale"].shape == (48, 2)
    for key in ("image", "filename", "imgnum", "rotation", "score", "index", "valid"):
        assert meta[key].shape == (48,), key
    assert meta["valid"].all()
    assert all(os.path.isfile(p) for p in meta["image"])


def test_a_record_is_converted_as_the_reference_does():
    raw = {"image": "a.jpg", "center": [101.0, 201.0], "scale": 2.0,
           "joints": [[11.0 + k, 21.0] for k in range(16)], "joints_vis": [1] * 15 + [0]}
    rec = convert_record(raw, root="ROOT", image_set="train")
    assert rec["image"] == os.path.join("ROOT", "images", "a.jpg")
    # y: 201 + 15 * 2 = 231, then both minus 1; scale 2 * 1.25.
    np.testing.assert_array_equal(rec["center"], [100.0, 230.0])
    np.testing.assert_array_equal(rec["scale"], [2.5, 2.5])
    np.testing.assert_array_equal(rec["joints_3d"][0], [10.0, 20.0, 0.0])
    np.testing.assert_array_equal(rec["joints_3d"][15], [25.0, 20.0, 0.0])
    np.testing.assert_array_equal(rec["joints_3d_vis"][0], [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(rec["joints_3d_vis"][15], [0.0, 0.0, 0.0])
    assert rec["filename"] == "" and rec["imgnum"] == 0


def test_a_record_whose_center_x_is_minus_one_is_only_made_zero_based():
    raw = {"image": "a.jpg", "center": [-1.0, 50.0], "scale": 3.0,
           "joints": [[1.0, 1.0]] * 16, "joints_vis": [1] * 16}
    rec = convert_record(raw, root="R", image_set="valid")
    np.testing.assert_array_equal(rec["center"], [-2.0, 49.0])
    np.testing.assert_array_equal(rec["scale"], [3.0, 3.0])
    np.testing.assert_array_equal(rec["joints_3d"][:, :2], np.zeros((16, 2)))


def test_the_test_split_has_zero_joints_and_visibility():
    rec = convert_record({"image": "t.jpg", "center": [11.0, 21.0], "scale": 1.0}, root="R",
                         image_set="test")
    np.testing.assert_array_equal(rec["center"], [10.0, 35.0])
    assert not rec["joints_3d"].any() and not rec["joints_3d_vis"].any()


def test_valid_batches_visit_every_record_once_in_file_order_and_mark_the_padding(synthetic_root):
    cfg = override(get_config("hrnet_quickstart"), [f"dataset.root={synthetic_root}"])
    with build_loader(cfg, "valid", batch_size=4, shuffle=False, workers=0) as loader:
        batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3  # 10 records: 4 + 4 + 2 real
    index = np.concatenate([b[3]["index"] for b in batches])
    valid = np.concatenate([b[3]["valid"] for b in batches])
    np.testing.assert_array_equal(index[valid], np.arange(10))
    np.testing.assert_array_equal(valid, [True] * 10 + [False] * 2)
    with open(os.path.join(synthetic_root, "annot", "valid.json")) as f:
        names = [r["image"] for r in json.load(f)]
    images = np.concatenate([b[3]["image"] for b in batches])[valid]
    assert [os.path.basename(p) for p in images] == names
    assert mpii_gt_path(cfg) == os.path.join(synthetic_root, "annot", "gt_valid.mat")
    assert len(load_records(synthetic_root, "valid")) == 10
