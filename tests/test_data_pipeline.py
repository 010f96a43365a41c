"""The per-sample transform and the loader, on hand-built images and small synthetic sets."""

import json
import os

import cv2
import numpy as np
import pytest

from hrnet_jax.config import get_config, override
from hrnet_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from hrnet_jax.data import MPIIDataset, build_loader, ensure_synthetic_mpii
from hrnet_jax.data.loader import BatchPlan
from hrnet_jax.data.mpii import MPII_KEYPOINTS
from hrnet_jax.data.sample import fliplr_joints

RIGHT = (0, 1, 2, 10, 11, 12)
LEFT = (5, 4, 3, 15, 14, 13)


def small_config(root, **fields):
    """64 x 64 inputs and 32 x 32 heatmaps (stride 2), sigma 1."""
    cfg = override(get_config("hrnet_quickstart"), [
        f"dataset.root={root}", "model.image_size=[64, 64]", "model.heatmap_size=[32, 32]",
        "model.sigma=1.0"])
    return override(cfg, fields) if fields else cfg


def pattern_bgr(width, height):
    """Pixel (x, y) holds B = x, G = y, R = (x + 2 y) mod 256: every pixel tells where it came from."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, (x + 2 * y) % 256], axis=-1).astype(np.uint8)


def write_set(root, records, images, image_set="valid"):
    """Writes images (name -> BGR array, saved losslessly) and raw records in the MPII layout."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "annot"), exist_ok=True)
    for name, image in images.items():
        assert cv2.imwrite(os.path.join(root, "images", name), image)
    with open(os.path.join(root, "annot", f"{image_set}.json"), "w") as f:
        json.dump(records, f)
    return str(root)


def raw_record(name, cx0, cy0, s_final, joints0, vis):
    """A raw (1-based, unshifted) record that converts to 0-based centre (cx0, cy0) and scale s_final."""
    s = s_final / 1.25
    return {"image": name, "center": [cx0 + 1, cy0 + 1 - 15 * s], "scale": s,
            "joints": [[x + 1, y + 1] for x, y in joints0], "joints_vis": list(vis)}


def expected_input(rgb_pixels):
    """The reference's ToTensor + Normalize, written out: (x / 255 - mean) / std in float32, CHW."""
    x = rgb_pixels.astype(np.float32) / np.float32(255.0)
    mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
    return ((x - mean) / std).transpose(2, 0, 1)


# ----------------------------------------------------------------------------- eval exactness


def test_an_identity_crop_gives_the_normalised_rgb_pixels_and_unmoved_joints(tmp_path):
    # centre (32, 32) and scale 0.32 (a 64 px box) onto a 64 x 64 input: the identity map.
    image = pattern_bgr(80, 70)
    joints = [(10.0, 20.0)] + [(33.0, 40.0)] * 14 + [(5.0, 6.0)]
    vis = [1] * 15 + [0]
    root = write_set(tmp_path, [raw_record("p.png", 32, 32, 0.32, joints, vis)], {"p.png": image})
    ds = MPIIDataset(root, "valid", False, small_config(root))
    input_, target, weight, meta = ds[0]
    rgb = image[:64, :64, ::-1]
    np.testing.assert_array_equal(input_, expected_input(rgb))
    np.testing.assert_allclose(meta["center"], [32.0, 32.0], atol=1e-9)
    np.testing.assert_allclose(meta["joints"][0, :2], [10.0, 20.0], atol=1e-6)
    # A joint with vis 0 is not transformed (it stays in image pixels), as the reference.
    np.testing.assert_allclose(meta["joints"][15, :2], [5.0, 6.0])
    # Stride 2: mu = (int(10 / 2 + 0.5), int(20 / 2 + 0.5)) = (5, 10).
    assert target[0, 10, 5] == 1.0 and target[0].sum() > 1.0
    assert weight[0, 0] == 1.0 and weight[15, 0] == 0.0 and not target[15].any()
    assert meta["rotation"] == 0.0 and meta["score"] == 1.0 and meta["valid"]


def test_a_box_twice_the_input_size_samples_every_other_pixel(tmp_path):
    # centre (64, 64), scale 0.64 (128 px) onto 64 px: input (u, v) reads image (2u, 2v) exactly.
    image = pattern_bgr(140, 130)
    root = write_set(tmp_path, [raw_record("p.png", 64, 64, 0.64, [(40.0, 30.0)] * 16, [1] * 16)],
                     {"p.png": image})
    ds = MPIIDataset(root, "valid", False, small_config(root))
    input_, target, weight, meta = ds[0]
    np.testing.assert_array_equal(input_, expected_input(image[0:128:2, 0:128:2, ::-1]))
    np.testing.assert_allclose(meta["joints"][:, :2], np.tile([20.0, 15.0], (16, 1)), atol=1e-6)
    # Joint at input (20, 15): mu = (10, 8).
    assert (target[:, 8, 10] == 1.0).all()


def test_eval_samples_are_the_same_for_any_epoch_and_seed(tmp_path):
    image = pattern_bgr(100, 100)
    root = write_set(tmp_path, [raw_record("p.png", 50, 50, 0.5, [(40.0, 30.0)] * 16, [1] * 16)],
                     {"p.png": image})
    a = MPIIDataset(root, "valid", False, small_config(root, seed=1)).load(0, epoch=0)
    b = MPIIDataset(root, "valid", False, small_config(root, seed=2)).load(0, epoch=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- augmentation


def test_flipping_joints_mirrors_x_swaps_pairs_and_undoes_itself():
    joints = np.zeros((16, 3))
    joints[:, 0] = np.arange(16) * 2.0
    joints[:, 1] = 7.0
    vis = np.ones((16, 3))
    vis[:, 2] = 0
    vis[4] = 0  # l_knee invisible
    flipped, fvis = fliplr_joints(joints, vis, 100, MPII_KEYPOINTS.flip_pairs)
    # r_ankle (0) takes l_ankle's x = 10 -> 100 - 10 - 1 = 89.
    assert flipped[0, 0] == 89.0 and flipped[0, 1] == 7.0
    # r_knee (1) takes the invisible l_knee: zeroed, and its visibility is 0.
    assert (flipped[1] == 0).all() and (fvis[1] == 0).all()
    # pelvis (6) has no pair: 100 - 12 - 1.
    assert flipped[6, 0] == 87.0
    back, bvis = fliplr_joints(flipped, fvis, 100, MPII_KEYPOINTS.flip_pairs)
    keep = vis[:, 0] > 0
    np.testing.assert_array_equal(back[keep, :2], joints[keep, :2])
    np.testing.assert_array_equal(bvis, vis)


def dots_image(joints, width, height):
    """Black image; right-side joints as red squares, left-side as blue, others white (BGR)."""
    image = np.zeros((height, width, 3), np.uint8)
    for k, (x, y) in enumerate(joints):
        color = (0, 0, 255) if k in RIGHT else (255, 0, 0) if k in LEFT else (255, 255, 255)
        cv2.rectangle(image, (int(x) - 6, int(y) - 6), (int(x) + 6, int(y) + 6), color, -1)
    return image


def test_augmented_joints_stay_on_their_dots_and_flips_swap_left_and_right(tmp_path):
    # The 16 joints on a 4 x 4 grid 25 px apart, in shuffled order, so dots never touch.
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(16, 2) * 25.0 + 62.0
    joints = grid[np.random.default_rng(0).permutation(16)]
    image = dots_image(joints, 200, 200)
    root = write_set(tmp_path, [raw_record("d.png", 100, 100, 1.0, joints.tolist(), [1] * 16)],
                     {"d.png": image}, image_set="train")
    ds = MPIIDataset(root, "train", True, small_config(root))
    mean, std = np.float32(IMAGENET_MEAN)[:, None], np.float32(IMAGENET_STD)[:, None]
    flips = rotations = 0
    for epoch in range(40):
        input_, _, _, meta = ds.load(0, epoch)
        xy = meta["joints"][:, :2]
        inside = (xy >= 2).all(1) & (xy < 62).all(1)
        pixels = input_[:, np.round(xy[inside, 1]).astype(int), np.round(xy[inside, 0]).astype(int)]
        rgb = pixels * std + mean  # (3, K) in [0, 1]
        ids = np.flatnonzero(inside)
        red = {k for k, c in zip(ids, rgb.T, strict=True) if c[0] > 0.5 and c[2] < 0.5}
        blue = {k for k, c in zip(ids, rgb.T, strict=True) if c[2] > 0.5 and c[0] < 0.5}
        right, left = set(RIGHT) & set(ids), set(LEFT) & set(ids)
        # Every joint sits on a dot; a flip relabels left and right with the mirror image.
        flipped = right <= blue and left <= red
        assert flipped or (right <= red and left <= blue), (epoch, red, blue)
        assert rgb[:, [k not in RIGHT + LEFT for k in ids]].min(initial=1.0) > 0.5
        flips += flipped
        rotations += meta["rotation"] != 0
        ratio = meta["scale"][0] / 1.0
        assert 0.75 - 1e-9 <= ratio <= 1.25 + 1e-9 and abs(meta["rotation"]) <= 60
    assert 8 <= flips <= 32 and 12 <= rotations <= 36


def test_a_training_sample_is_a_pure_function_of_seed_epoch_and_index(tmp_path):
    image = pattern_bgr(120, 120)
    root = write_set(tmp_path, [raw_record("p.png", 60, 60, 0.5, [(50.0, 50.0)] * 16, [1] * 16)],
                     {"p.png": image}, image_set="train")
    ds = MPIIDataset(root, "train", True, small_config(root, seed=4))
    again = MPIIDataset(root, "train", True, small_config(root, seed=4))
    np.testing.assert_array_equal(ds.load(0, 3)[0], again.load(0, 3)[0])
    others = [ds.load(0, e)[3]["rotation"] for e in range(6)] + [
        MPIIDataset(root, "train", True, small_config(root, seed=5)).load(0, 3)[3]["rotation"]]
    assert len(set(others)) > 2


def test_half_body_crops_around_upper_or_lower_joints_when_enabled(tmp_path):
    joints = [(90.0, 150.0), (90.0, 120.0), (90.0, 100.0), (110.0, 100.0), (110.0, 120.0),
              (110.0, 150.0), (100.0, 100.0), (100.0, 60.0), (100.0, 50.0), (100.0, 30.0),
              (70.0, 90.0), (75.0, 75.0), (85.0, 60.0), (115.0, 60.0), (125.0, 75.0), (130.0, 90.0)]
    root = write_set(tmp_path, [raw_record("p.png", 100, 90, 1.0, joints, [1] * 16)],
                     {"p.png": pattern_bgr(200, 200)}, image_set="train")
    cfg = small_config(root, **{"dataset.prob_half_body": 1.0, "dataset.scale_factor": 0.0,
                                "dataset.rot_factor": 0.0, "dataset.flip": False})
    ds = MPIIDataset(root, "train", True, cfg)
    centers = {tuple(np.round(ds.load(0, e)[3]["center"], 3)) for e in range(12)}
    # Lower body (ids 0-6): mean (100, 120), extent 20 x 50 -> 50 x 50 box, * 1.5 / 200 = 0.375.
    # Upper body (ids 7-15): mean (900 / 9, 590 / 9) = (100, 65.556), extent 60 x 60 -> 0.45.
    assert centers == {(100.0, 120.0), (100.0, 65.556)}
    scales = {round(float(ds.load(0, e)[3]["scale"][0]), 4) for e in range(12)}
    assert scales == {0.375, 0.45}


# ----------------------------------------------------------------------------- loader


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("loader") / "synthetic")
    return ensure_synthetic_mpii(root, num_train=26, num_valid=11, seed=1, image_size=64)


def epoch_of(loader):
    return [(b[0].copy(), b[1].copy(), b[3]["index"].copy(), b[3]["rotation"].copy()) for b in loader]


def test_the_same_seed_gives_the_same_batches_with_zero_or_two_workers(synthetic_root):
    cfg = small_config(synthetic_root, seed=7)
    with build_loader(cfg, "train", batch_size=4, workers=0) as loader:
        inline = epoch_of(loader)
    with build_loader(cfg, "train", batch_size=4, workers=2) as loader:
        parallel = epoch_of(loader)
        second = epoch_of(loader)  # the next epoch follows on
    assert len(inline) == len(parallel) == 6  # 26 // 4, remainder dropped
    for a, b in zip(inline, parallel, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(np.concatenate([b[2] for b in second]),
                              np.concatenate([b[2] for b in inline]))


def test_training_visits_distinct_records_in_a_new_order_each_epoch(synthetic_root):
    with build_loader(small_config(synthetic_root), "train", batch_size=4) as loader:
        assert loader.get_state() == {"epoch": 0, "batch": 0}
        first = np.concatenate([b[3]["index"] for b in loader])
        assert loader.get_state() == {"epoch": 1, "batch": 0}
        second = np.concatenate([b[3]["index"] for b in loader])
    assert len(set(first)) == 24 and len(set(second)) == 24
    assert not np.array_equal(first, second)


def test_a_restored_iterator_continues_mid_epoch_with_the_same_batches(synthetic_root):
    cfg = small_config(synthetic_root, seed=3)
    with build_loader(cfg, "train", batch_size=4) as loader:
        loader.set_state({"epoch": 2, "batch": 0})
        full = epoch_of(loader)
    with build_loader(cfg, "train", batch_size=4) as loader:
        loader.set_state({"epoch": 2, "batch": 0})
        it = iter(loader)
        next(it), next(it)
        state = loader.get_state()
    assert state == {"epoch": 2, "batch": 2}
    state = json.loads(json.dumps(state))
    with build_loader(cfg, "train", batch_size=4, workers=2) as resumed:
        resumed.set_state(state)
        rest = epoch_of(resumed)
        assert resumed.get_state() == {"epoch": 3, "batch": 0}
    assert len(rest) == 4
    for a, b in zip(full[2:], rest, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_bad_loader_state_is_refused_with_the_expected_form(synthetic_root):
    with build_loader(small_config(synthetic_root), "train", batch_size=4) as loader:
        with pytest.raises(ValueError, match="epoch"):
            loader.set_state({"batch": 1})
        with pytest.raises(ValueError, match=r"\[0, 6\]"):
            loader.set_state({"epoch": 0, "batch": 7})


def test_two_processes_share_training_records_without_overlap(synthetic_root):
    cfg = small_config(synthetic_root, seed=2)
    seen = []
    for p in range(2):
        with build_loader(cfg, "train", batch_size=4, process_index=p, process_count=2) as loader:
            assert len(loader) == 3  # 26 // (4 * 2)
            seen.append([b[3]["index"] for b in loader])
    flat = [np.concatenate(s) for s in seen]
    assert len(set(flat[0]) | set(flat[1])) == 24 and not set(flat[0]) & set(flat[1])
    # Together they see the global batches of one process with twice the batch.
    with build_loader(cfg, "train", batch_size=8) as loader:
        for k, batch in enumerate(loader):
            np.testing.assert_array_equal(batch[3]["index"],
                                          np.concatenate([seen[0][k], seen[1][k]]))


def test_two_processes_evaluate_every_record_exactly_once(synthetic_root):
    cfg = small_config(synthetic_root)
    real = []
    for p in range(2):
        with build_loader(cfg, "valid", batch_size=4, process_index=p, process_count=2) as loader:
            assert len(loader) == 2  # ceil(11 / 8) global batches of 4 + 4
            for _, _, _, meta in loader:
                real.append(meta["index"][meta["valid"]])
    np.testing.assert_array_equal(np.sort(np.concatenate(real)), np.arange(11))


def test_the_batch_plan_pads_an_empty_share_with_invalid_samples():
    plan = BatchPlan(3, 2, seed=0, shuffle=False, drop_remainder=False, process_index=3,
                     process_count=4)
    indices, valid = plan.batch(0, 0)
    assert plan.num_batches == 1 and not valid.any() and ((0 <= indices) & (indices < 3)).all()


def test_a_training_set_smaller_than_one_batch_is_refused():
    with pytest.raises(ValueError, match="fewer than one batch of 8"):
        BatchPlan(7, 8, seed=0, shuffle=True, drop_remainder=True, process_index=0, process_count=1)


def test_the_seed_comes_from_the_config_and_the_old_seed_argument_warns(synthetic_root):
    with build_loader(small_config(synthetic_root, seed=5), "train", batch_size=4) as loader:
        from_config = epoch_of(loader)
    with pytest.warns(DeprecationWarning, match=r"seed=5"):
        old = build_loader(small_config(synthetic_root), "train", batch_size=4, seed=5)
    with old:
        from_argument = epoch_of(old)
    with build_loader(small_config(synthetic_root), "train", batch_size=4) as loader:
        seed_0 = epoch_of(loader)
    for a, b in zip(from_config, from_argument, strict=True):
        np.testing.assert_array_equal(a[2], b[2])
        np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(from_config[0][2], seed_0[0][2])
