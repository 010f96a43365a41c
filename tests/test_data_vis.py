"""Debug pictures: a joints grid and heatmap rows, written as image files that are not blank."""

import os

import cv2
import numpy as np
import pytest

from hrnet_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from hrnet_jax.vis import denormalize, heatmaps_grid, joints_grid, save_debug_images


def normalised(rgb):
    """(B, H, W, 3) uint8 RGB -> the network's normalised (B, 3, H, W)."""
    x = rgb.astype(np.float32) / 255.0
    return ((x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).transpose(0, 3, 1, 2)


def test_denormalising_recovers_the_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, size=(2, 5, 7, 3)).astype(np.uint8)
    np.testing.assert_array_equal(denormalize(normalised(rgb)), rgb)


def test_the_joints_grid_places_images_with_padding_and_marks_joints():
    rgb = np.full((3, 20, 30, 3), 100, np.uint8)
    joints = np.zeros((3, 2, 3))
    joints[:, 0, :2] = (10, 5)
    joints[:, 1, :2] = (25, 15)
    vis = np.array([[1, 0]] * 3)
    grid = joints_grid(normalised(rgb), joints, vis, nrow=2, padding=2)
    # Two columns, two rows: 2 + 2 * (30 + 2) wide, 2 + 2 * (20 + 2) high.
    assert grid.shape == (46, 66, 3)
    assert (grid[:2] == 0).all() and (grid[2 + 20 + 10, 2 + 15] == 100).all()
    # Sample 1 sits in column 1: its visible joint at (10, 5) is drawn red there.
    np.testing.assert_array_equal(grid[2 + 5, 2 + 32 + 10], [255, 0, 0])
    # The invisible joint is not drawn.
    np.testing.assert_array_equal(grid[2 + 15, 2 + 32 + 25], [100, 100, 100])
    # The empty fourth cell stays black.
    assert (grid[24:, 34:] == 0).all()


def test_heatmap_rows_hold_the_resized_image_then_one_jet_map_per_joint():
    rgb = np.full((2, 16, 16, 3), 200, np.uint8)
    maps = np.zeros((2, 3, 8, 8), np.float32)
    maps[1, 2, 4, 6] = 1.0
    grid = heatmaps_grid(normalised(rgb), maps)
    assert grid.shape == (16, 32, 3)
    assert (grid[:8, :8] == 200).all()
    # A zero heatmap is JET's dark blue (0, 0, 128) blended 0.7 with the image's 0.3.
    np.testing.assert_array_equal(grid[0, 8 + 0], [60, 60, 149])
    # The peak of sample 1, joint 2 is JET's dark red (128, 0, 0) blended: 0.7 * 128 + 0.3 * 200,
    # ringed in red.
    np.testing.assert_array_equal(grid[8 + 4, 24 + 6], [149, 60, 60])
    np.testing.assert_array_equal(grid[8 + 4, 24 + 7], [255, 0, 0])
    # Sample 0 has no peak above 0, so nothing is ringed.
    assert not (grid[:8, 8:] == [255, 0, 0]).all(-1).any()


def test_debug_images_are_written_and_are_not_blank(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    meta = {"joints": rng.uniform(0, 32, size=(4, 16, 3)), "joints_vis": np.ones((4, 16, 3))}
    target = rng.uniform(0, 1, size=(4, 16, 8, 8)).astype(np.float32)
    paths = save_debug_images(str(tmp_path / "dbg" / "train_0"), normalised(rgb), meta, target,
                              meta["joints"] + 1, target * 0.5, ext="png")
    assert [os.path.basename(p) for p in paths] == [
        "train_0_gt.png", "train_0_pred.png", "train_0_hm_gt.png", "train_0_hm_pred.png"]
    for path in paths:
        picture = cv2.imread(path)
        assert picture is not None and picture.std() > 10
    with pytest.raises(ValueError, match="jpg"):
        save_debug_images(str(tmp_path / "x"), normalised(rgb), meta, ext="bmp")
