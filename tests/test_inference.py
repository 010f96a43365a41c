"""PoseEstimator, the exported-model format, and the convert/predict command lines."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import chex
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (  # noqa: I001  (shared with the video tests)
    BLUE,
    CHANNEL_OF_JOINT,
    GREEN,
    LEFT_JOINTS,
    MIDLINE_JOINTS,
    OFFSET,
    RED,
    RIGHT_JOINTS,
)
from conftest import colour_reading_variables as _colour_reading_variables
from conftest import heat as _heat
from conftest import small_estimator_config as _tiny_config
from hrnet_jax import model_file
from hrnet_jax.config import get_config, override
from hrnet_jax.convert import torch_state_dict_to_variables, variables_to_torch_state_dict
from hrnet_jax.crop import box_to_center_scale, check_boxes, crop_inputs
from hrnet_jax.images import read_image
from hrnet_jax.inference import PoseEstimator, draw_keypoints
from hrnet_jax.models import build_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCORE = 0.5


def _flat_output_variables(cfg, seed=0):
    """Random variables whose final layer outputs the constant SCORE on every heatmap.

    Flat heatmaps put every joint's argmax at heatmap pixel (0, 0), the
    top-left corner of the crop, whatever the input: the box mapping can then
    be checked by hand.
    """
    model = build_model(cfg)
    w, h = cfg.model.image_size
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, h, w)), train=False))
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32),
                             abstract)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
    final = variables["params"]["final_layer"]
    final["kernel"] = np.zeros_like(final["kernel"])
    final["bias"] = np.full_like(final["bias"], SCORE)
    return variables


@pytest.fixture(scope="module")
def tiny():
    cfg = _tiny_config()
    return cfg, _flat_output_variables(cfg)


@pytest.fixture(scope="module")
def estimator(tiny):
    cfg, variables = tiny
    return PoseEstimator(variables, cfg)


def _image(height=120, width=90, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- boxes


def test_tall_box_is_widened_to_a_square_model_and_padded_by_1_25():
    center, scale = box_to_center_scale([[10, 20, 40, 80]], (64, 64))
    np.testing.assert_allclose(center, [[30, 60]])
    np.testing.assert_allclose(scale, [[80 / 200 * 1.25, 80 / 200 * 1.25]])


def test_wide_box_is_heightened_to_the_coco_aspect_ratio_3_to_4():
    center, scale = box_to_center_scale([[0, 0, 150, 100]], (192, 256))
    np.testing.assert_allclose(center, [[75, 50]])
    # 150 > 0.75 * 100: height becomes 150 / 0.75 = 200.
    np.testing.assert_allclose(scale, [[150 / 200 * 1.25, 200 / 200 * 1.25]])


def test_keypoints_of_flat_heatmaps_land_on_the_crop_corner_of_each_box(estimator):
    boxes = [[10, 20, 40, 80], [50, 0, 30, 30]]
    keypoints = estimator(_image(), boxes)
    chex.assert_shape(keypoints, (2, 16, 3))
    assert keypoints.dtype == np.float32
    # Box 0: centre (30, 60), side 80 * 1.25 = 100 px: the crop's top-left
    # corner, heatmap pixel (0, 0), is (30 - 50, 60 - 50).
    np.testing.assert_allclose(keypoints[0, :, :2], np.tile([[-20, 10]], (16, 1)), atol=1e-3)
    # Box 1: centre (65, 15), side 37.5 px.
    np.testing.assert_allclose(keypoints[1, :, :2], np.tile([[65 - 18.75, 15 - 18.75]], (16, 1)),
                               atol=1e-3)
    np.testing.assert_allclose(keypoints[..., 2], SCORE, rtol=1e-6)


def test_keypoints_are_mapped_back_in_float64_and_rounded_once_as_the_reference(estimator):
    # Box (13.3, 7.1, 41, 83.7) on the square model: float32 centre c = f32((33.8, 48.95)),
    # scale s = f32(f32(83.7 / 200) * 1.25), box side f32(200 s) (float32, as the
    # reference multiplies a float32 scale). The reference's point above the centre is
    # y1 = f32(c_y - side / 2), and the heatmap corner (0, 0) maps to the third point,
    # (f32(c_x - d), y1) with d = f32(c_y - y1), computed in float64 then rounded.
    keypoints = estimator(_image(), [13.3, 7.1, 41.0, 83.7])
    cx, cy = float(np.float32(13.3 + 20.5)), float(np.float32(7.1 + 83.7 / 2))
    side = float(np.float32(np.float32(np.float32(83.7 / 200) * np.float32(1.25)) * 200))
    y1 = float(np.float32(cy - side / 2))
    d = float(np.float32(cy - y1))
    expected = np.tile(np.array([np.float32(cx - d), y1], np.float32), (16, 1))
    np.testing.assert_array_equal(keypoints[0, :, :2], expected)


def test_without_a_box_the_crop_is_the_whole_image_fitted_to_the_aspect_ratio(estimator):
    keypoints = estimator(_image(height=120, width=90))
    chex.assert_shape(keypoints, (1, 16, 3))
    # 90x120 widened to 120x120 around (45, 60), no padding: top-left (-15, 0).
    np.testing.assert_allclose(keypoints[0, :, :2], np.tile([[-15, 0]], (16, 1)), atol=1e-3)


def test_image_is_read_from_a_path_as_rgb(tmp_path, estimator):
    image = _image()
    path = tmp_path / "person.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(path), image)
    np.testing.assert_allclose(estimator(str(path), [10, 20, 40, 80]),
                               estimator(image, [10, 20, 40, 80]), rtol=1e-6)


def test_image_is_read_as_bgr_for_the_data_pipeline_and_arrays_are_kept_as_given(tmp_path):
    image = _image()
    path = tmp_path / "person.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(path, "BGR"), image[..., ::-1])
    np.testing.assert_array_equal(read_image(image, "BGR"), image)
    with pytest.raises(ValueError, match="colour_order.*'RGBA'"):
        read_image(path, "RGBA")


def _jpeg_turned_by_exif(image):
    """JPEG bytes of ``image`` with EXIF orientation 6 (viewers turn it 90 degrees clockwise)."""
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    tiff = (b"MM\x00*" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big")
            + bytes.fromhex("0112 0003 00000001 0006 0000") + (0).to_bytes(4, "big"))
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpeg[2:]


def test_exif_orientation_is_followed_for_users_and_ignored_for_the_data_pipeline(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    image[:10, :20] = 255
    path = tmp_path / "turned.jpg"
    path.write_bytes(_jpeg_turned_by_exif(image))
    turned = read_image(path)
    assert turned.shape == (60, 40, 3) and turned[:20, -10:].min() > 200
    stored = read_image(path, "BGR", exif_orientation=False)
    assert stored.shape == (40, 60, 3) and stored[:10, :20].min() > 200


def test_real_network_outputs_keep_keypoints_inside_the_padded_box():
    cfg = _tiny_config()
    model = build_model(cfg)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64))))
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), abstract)
    keypoints = PoseEstimator(variables, cfg, flip_test=False)(_image(), [[10, 20, 40, 80]])
    # The crop spans x in [-20, 80), y in [10, 110): heatmap pixels map inside it.
    assert np.all((keypoints[0, :, 0] >= -20) & (keypoints[0, :, 0] <= 80))
    assert np.all((keypoints[0, :, 1] >= 10) & (keypoints[0, :, 1] <= 110))


# --------------------------------------------------------------------------- image-dependent heatmaps

@pytest.fixture(scope="module")
def colour_net():
    cfg = _tiny_config()
    return cfg, _colour_reading_variables(cfg)


@pytest.fixture(scope="module")
def colour_estimator_no_flip(colour_net):
    cfg, variables = colour_net
    return PoseEstimator(variables, cfg, flip_test=False)


def test_the_hand_set_network_reads_one_colour_channel_per_joint_at_a_quarter_of_the_resolution(
        colour_net):
    cfg, variables = colour_net
    # Normalised colours lie in [-2.12, 2.64].
    x = np.random.default_rng(0).uniform(-2.2, 2.7, size=(2, 3, 64, 64)).astype(np.float32)
    heatmaps = np.asarray(jax.jit(build_model(cfg).apply)(variables, x))
    expected = x[:, list(CHANNEL_OF_JOINT), ::4, ::4] + OFFSET
    np.testing.assert_allclose(heatmaps, expected, rtol=1e-6, atol=1e-6)


def _expected(right, left, midline):
    """(16, 3) keypoints from (x, y, score) of the right, left and midline joints."""
    out = np.zeros((16, 3))
    for joints, value in ((RIGHT_JOINTS, right), (LEFT_JOINTS, left), (MIDLINE_JOINTS, midline)):
        out[list(joints)] = value
    return out


def _assert_keypoints(keypoints, expected):
    np.testing.assert_allclose(keypoints[..., :2], expected[..., :2], rtol=0, atol=1e-3)
    np.testing.assert_allclose(keypoints[..., 2], expected[..., 2], rtol=0, atol=1e-4)


def _boxed_blocks_image():
    """A black 200x160 image with 7x7 red, green and blue blocks.

    With the box (40, 8.8, 80, 102.4), fitted to a square of side 102.4 and
    padded to 128 px around (80, 60), crop pixel (x, y) is image pixel
    (16 + 2x, -4 + 2y), and heatmap pixel (u, v) reads image pixel
    (16 + 8u, -4 + 8v). Each block holds exactly one such pixel, 3 px from its
    edges: red (88, 52) = heatmap (9, 7), green (48, 84) = (4, 11), blue
    (112, 12) = (12, 2).
    """
    image = np.zeros((160, 200, 3), np.uint8)
    image[49:56, 85:92, RED] = 255
    image[81:88, 45:52, GREEN] = 255
    image[9:16, 109:116, BLUE] = 255
    return image


BLOCKS_BOX = [40, 8.8, 80, 102.4]
BLOCKS_KEYPOINTS = _expected((88, 52, _heat(255, RED)), (48, 84, _heat(255, GREEN)),
                             (112, 12, _heat(255, BLUE)))


def test_keypoints_land_on_the_image_pixels_the_crop_warp_puts_under_heatmap_pixels(
        colour_estimator_no_flip):
    # Heatmap neighbours of each peak are equal (background), so there is no quarter-pixel move.
    keypoints = colour_estimator_no_flip(_boxed_blocks_image(), [BLOCKS_BOX])
    _assert_keypoints(keypoints[0], BLOCKS_KEYPOINTS)


def test_crops_are_interpolated_bilinearly_between_image_pixels(colour_estimator_no_flip):
    # The same box half a pixel to the right: heatmap pixel (u, v) reads image
    # point (16.5 + 8u, -4 + 8v), halfway between two columns. Red 200 in column
    # 88 and 100 in column 89 are seen at u = 9 as their mean, 150, at x = 88.5.
    image = np.zeros((160, 200, 3), np.uint8)
    image[49:56, 88, RED] = 200
    image[49:56, 89, RED] = 100
    keypoints = colour_estimator_no_flip(image, [BLOCKS_BOX[0] + 0.5, *BLOCKS_BOX[1:]])
    np.testing.assert_allclose(keypoints[0, list(RIGHT_JOINTS)],
                               np.tile([88.5, 52, _heat(150, RED)], (6, 1)), rtol=0, atol=1e-3)


def test_crops_are_normalised_with_the_imagenet_mean_and_std_per_channel(colour_estimator_no_flip):
    # The scores above, (255 / 255 - mean) / std + OFFSET per colour, show the
    # normalisation; the same crops given in [0, 1] instead score 1 + OFFSET.
    image = _boxed_blocks_image()
    center, scale = box_to_center_scale([BLOCKS_BOX], (64, 64))
    crops = crop_inputs(image, center, scale, (64, 64))
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    normalised = colour_estimator_no_flip.predict_crops(crops, center, scale)
    plain = colour_estimator_no_flip.predict_crops(crops * std + mean, center, scale)
    _assert_keypoints(normalised[0], BLOCKS_KEYPOINTS)
    np.testing.assert_allclose(plain[0, :, 2], 1 + OFFSET, rtol=0, atol=1e-4)
    np.testing.assert_allclose(plain[0, :, :2], BLOCKS_KEYPOINTS[:, :2], rtol=0, atol=1e-3)


def test_one_persons_keypoints_do_not_depend_on_who_else_is_in_the_batch(colour_estimator_no_flip):
    image = _boxed_blocks_image()
    # Batches of 1, 3 and 5 people are padded to 1, 4 and 8 crops.
    others = [[100, 0, 60, 60], [0, 100, 50, 50], [120, 80, 70, 70], [10, 10, 40, 120]]
    alone = colour_estimator_no_flip(image, BLOCKS_BOX)  # a single box may be given flat
    chex.assert_shape(alone, (1, 16, 3))
    _assert_keypoints(alone[0], BLOCKS_KEYPOINTS)
    each = [colour_estimator_no_flip(image, box)[0] for box in others]
    for n in (3, 5):
        keypoints = colour_estimator_no_flip(image, [BLOCKS_BOX, *others[:n - 1]])
        chex.assert_shape(keypoints, (n, 16, 3))
        np.testing.assert_array_equal(keypoints[0], alone[0])
        for k in range(1, n):
            np.testing.assert_array_equal(keypoints[k], each[k - 1])


def _flip_image():
    """A black 64x64 image, cropped whole and unscaled: heatmap pixel (u, v) is image pixel (4u, 4v).

    Rows 40-43: red (200) in column 36, green (255) in column 35 (a right side).
    Rows 24-27: green (255) in column 20, red (200) in column 19 (a left side).
    Rows 12-15: blue (255) in columns 27 and 28 (the midline).
    """
    image = np.zeros((64, 64, 3), np.uint8)
    image[40:44, 36, RED] = 200
    image[40:44, 35, GREEN] = 255
    image[24:28, 20, GREEN] = 255
    image[24:28, 19, RED] = 200
    image[12:16, 27:29, BLUE] = 255
    return image


def test_flip_test_mirrors_the_crop_swaps_left_and_right_and_shifts_one_column(colour_net):
    cfg, variables = colour_net
    keypoints = PoseEstimator(variables, cfg)(_flip_image())
    # Joint j's fused map at (v, u) averages its own map, which reads pixel
    # (4u, 4v), and its flip partner's map of the mirrored crop, mirrored back:
    # that reads pixel (63 - 4(15 - u), 4v) = (4u + 3, 4v), and shifted one
    # column right, (4u - 1, 4v). Right joints (partner left: green) peak where
    # red is at 4u and green at 4u - 1: (9, 10); left joints (partner red) at
    # (5, 6); the midline joints (their own partners) at (7, 3). Neighbours
    # are equal: no quarter-pixel move.
    expected = _expected((36, 40, (_heat(200, RED) + _heat(255, GREEN)) / 2),
                         (20, 24, (_heat(255, GREEN) + _heat(200, RED)) / 2),
                         (28, 12, _heat(255, BLUE)))
    _assert_keypoints(keypoints[0], expected)


def test_flip_test_without_the_heatmap_shift_reads_the_partner_three_columns_right(colour_net):
    cfg, variables = colour_net
    cfg = dataclasses.replace(cfg, test=dataclasses.replace(cfg.test, shift_heatmap=False))
    keypoints = PoseEstimator(variables, cfg)(_flip_image())
    # Unshifted, the partner term reads pixel (4u + 3, 4v). Right joints: red at
    # u = 9 gives (heat(red 200) + heat(green 0)) / 2, green (column 35) at
    # u = 8 gives (heat(red 0) + heat(green 255)) / 2, larger (1 / 0.224 >
    # (200 / 255) / 0.229); its right neighbour u = 9 is higher than its left:
    # x = 4 * 8.25. Left joints: green at u = 5 beats red (column 19) at
    # u = 4, the higher neighbour: x = 4 * 4.75. Midline: blue columns 28 (at
    # u = 7) and 27 (at u = 6) tie; the first, u = 6, is taken, and moves a
    # quarter towards u = 7: x = 4 * 6.25.
    expected = _expected((33, 40, (_heat(0, RED) + _heat(255, GREEN)) / 2),
                         (19, 24, (_heat(255, GREEN) + _heat(0, RED)) / 2),
                         (25, 12, (_heat(255, BLUE) + _heat(0, BLUE)) / 2))
    _assert_keypoints(keypoints[0], expected)


# --------------------------------------------------------------------------- a reference network

GOLDEN = ROOT / "specs" / "golden"


def _golden_w8_mpii():
    """Config, variables, input and eval-mode heatmaps of the reference network in specs/golden."""
    with np.load(GOLDEN / "w8_mpii.npz") as data:
        layout = json.loads(str(data["state_dict_layout"]))
        values = data["state_dict_values"].astype(np.float32)
        x = data["input"].astype(np.float32)
        heatmaps = data["eval_output"]
    sizes = [int(np.prod(shape)) for _, shape in layout]
    parts = np.split(values, np.cumsum(sizes)[:-1])
    state_dict = {k: p.reshape(shape) for (k, shape), p in zip(layout, parts, strict=True)}
    cfg = override(get_config("hrnet_w8"), ["model.image_size=64,64", "model.heatmap_size=16,16"])
    return cfg, torch_state_dict_to_variables(state_dict, cfg), x, heatmaps


def _reference_decoding(heatmaps):
    """(N, J, 3) keypoints of (N, J, 16, 16) heatmaps of crops centred (32, 32) with scale 0.32.

    The reference's semantics: the first argmax (u, v), moved a quarter pixel
    towards the higher neighbour where 1 < u < 15 and 1 < v < 15; heatmap
    pixels are 4 image pixels: (x, y) = 4 (u, v).
    """
    n, j, h, w = heatmaps.shape
    out = np.zeros((n, j, 3))
    for a in range(n):
        for b in range(j):
            hm = heatmaps[a, b]
            v, u = divmod(int(np.argmax(hm)), w)
            du = dv = 0.0
            if 1 < u < w - 1 and 1 < v < h - 1:
                du = 0.25 * np.sign(hm[v, u + 1] - hm[v, u - 1])
                dv = 0.25 * np.sign(hm[v + 1, u] - hm[v - 1, u])
            out[a, b] = (4 * (u + du), 4 * (v + dv), hm[v, u])
    return out


def _picture():
    """A 160x120 picture: a graded background and a stick figure."""
    yy, xx = np.mgrid[0:120, 0:160]
    image = np.stack([60 + xx // 2, 50 + yy, 140 - (xx + yy) // 4], axis=-1).astype(np.uint8)
    cv2.circle(image, (80, 22), 9, (225, 180, 150), -1)
    limbs = [((80, 31), (80, 66), 7), ((80, 38), (62, 55), 4), ((62, 55), (55, 72), 4),
             ((80, 38), (99, 52), 4), ((99, 52), (108, 68), 4), ((80, 66), (70, 88), 5),
             ((70, 88), (68, 110), 5), ((80, 66), (90, 89), 5), ((90, 89), (94, 111), 5)]
    for a, b, width in limbs:
        cv2.line(image, a, b, (40, 70, 170), width)
    return np.ascontiguousarray(image)


def test_a_reference_network_through_pose_estimator_decodes_as_the_reference_and_sees_the_image():
    cfg, variables, x, reference_heatmaps = _golden_w8_mpii()
    scale = float(np.abs(reference_heatmaps).max())
    expected = _reference_decoding(reference_heatmaps)
    # The recorded heatmaps leave room for the golden specs' tolerance (1e-4 of
    # the largest value): each maximum is positive and at least 2e-4 above the
    # runner-up, so no network within it decodes differently.
    top2 = np.sort(reference_heatmaps.reshape(2, 16, -1), axis=-1)[..., -2:]
    assert np.all(top2[..., 1] > 0) and np.all(top2[..., 1] - top2[..., 0] > 2e-4 * scale)
    # Op by op: compiling the full-depth network would take about 20 s on a 2-core CPU.
    with jax.disable_jit():
        keypoints = PoseEstimator(variables, cfg, flip_test=False).predict_crops(
            x, np.full((2, 2), 32.0), np.full((2, 2), 0.32))
        np.testing.assert_allclose(keypoints[..., :2], expected[..., :2], rtol=0, atol=1e-3)
        np.testing.assert_allclose(keypoints[..., 2], expected[..., 2], rtol=0, atol=1e-4 * scale)

        estimator = PoseEstimator(variables, cfg)
        box = [50, 8, 60, 106]
        person = estimator(_picture(), box)
        mirrored = estimator(np.ascontiguousarray(_picture()[:, ::-1]), box)
    # The box holds the figure and its mirror image (centred, column 80 -> 79):
    # other pixels, other keypoints.
    moved = np.linalg.norm(person[0, :, :2] - mirrored[0, :, :2], axis=-1)
    print(f"joints moved by the mirrored picture (px): {np.round(moved, 1)}")
    assert np.count_nonzero(moved > 2) >= 4, moved


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([10, 10, 0, 20], "box 0 .* is empty"),
        ([[1, 1, 5, 5], [10, 10, 5, -3]], "box 1 .* is empty"),
        ([100, 10, 5, 5], "box 0 .* outside the 90x120 image"),
        ([-20, -20, 10, 10], "outside"),
        ([1, 2, 3], r"expected shape \(P, 4\)"),
        ([1, 2, np.nan, 4], "not finite"),
    ],
)
def test_bad_boxes_are_rejected_naming_the_box(boxes, message):
    with pytest.raises(ValueError, match=message):
        check_boxes(boxes, (120, 90, 3))


def test_unreadable_image_file_is_rejected_naming_the_path(tmp_path, estimator):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg.*could not be read"):
        estimator(str(path))
    with pytest.raises(ValueError, match="does not exist"):
        estimator(str(tmp_path / "absent.jpg"))


def test_image_array_must_be_hxwx3_uint8(estimator):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        estimator(np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        estimator(np.zeros((64, 64, 3), np.float32))


def test_variables_of_another_network_are_refused_listing_the_differences(tiny):
    cfg, variables = tiny
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_joints=17))
    with pytest.raises(ValueError, match=r"params/final_layer/kernel: expected \(1, 1, 8, 17\)"):
        PoseEstimator(variables, other)


def test_variables_without_a_config_are_refused(tiny):
    _, variables = tiny
    with pytest.raises(ValueError, match="cfg is required"):
        PoseEstimator(variables)


# --------------------------------------------------------------------------- model files


def test_exported_model_round_trips_config_and_variables(tmp_path, tiny):
    cfg, variables = tiny
    path = model_file.save_model(tmp_path / "model", variables, cfg)
    assert sorted(os.listdir(path)) == ["config.json", "variables.msgpack"]
    loaded, loaded_cfg = model_file.load_model(path)
    assert loaded_cfg == cfg
    chex.assert_trees_all_equal(loaded, variables)


def test_a_failed_save_leaves_no_directory_behind(tmp_path, tiny, monkeypatch):
    cfg, variables = tiny

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model_file.serialization, "msgpack_serialize", explode)
    with pytest.raises(OSError, match="disk full"):
        model_file.save_model(tmp_path / "model", variables, cfg)
    assert os.listdir(tmp_path) == []


def test_a_failed_overwrite_keeps_the_previous_model(tmp_path, tiny, monkeypatch):
    cfg, variables = tiny
    path = model_file.save_model(tmp_path / "model", variables, cfg)
    monkeypatch.setattr(model_file, "_write_file",
                        lambda *a: (_ for _ in ()).throw(OSError("interrupted")))
    with pytest.raises(OSError, match="interrupted"):
        model_file.save_model(path, variables, cfg)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model"]
    model_file.load_model(path)


def test_saving_over_a_directory_that_is_not_a_model_is_refused(tmp_path, tiny):
    cfg, variables = tiny
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an exported model"):
        model_file.save_model(tmp_path / "notes", variables, cfg)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_missing_or_corrupt_model_files_name_the_path(tmp_path, tiny):
    cfg, variables = tiny
    with pytest.raises(FileNotFoundError, match="nowhere"):
        model_file.load_model(tmp_path / "nowhere")
    path = model_file.save_model(tmp_path / "model", variables, cfg)
    pathlib.Path(path, "variables.msgpack").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"model.*variables.msgpack is corrupt"):
        model_file.load_model(path)
    pathlib.Path(path, "variables.msgpack").unlink()
    with pytest.raises(FileNotFoundError, match="variables.msgpack is missing"):
        model_file.load_model(path)


def test_variables_saved_for_another_network_are_reported_on_load(tmp_path, tiny):
    cfg, variables = tiny
    wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_joints=17))
    path = model_file.save_model(tmp_path / "model", variables, wider)
    with pytest.raises(ValueError, match=r"does not match config.json[\s\S]*final_layer"):
        model_file.load_model(path)


def test_drawing_keeps_the_image_shape_and_marks_joints():
    image = np.zeros((100, 80, 3), np.uint8)
    keypoints = np.zeros((1, 16, 3), np.float32)
    keypoints[0, :, 0] = np.linspace(10, 70, 16)
    keypoints[0, :, 1] = 50
    keypoints[0, :, 2] = 0.9
    picture = draw_keypoints(image, keypoints)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    assert picture[50, 10].any() and not image.any()


# --------------------------------------------------------------------------- command lines


def _run(script, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


TINY_OVERRIDES = [
    "model.image_size=[64,64]", "model.heatmap_size=[16,16]",
    "model.stage2.num_blocks=[1,1]",
    "model.stage3.num_modules=1", "model.stage3.num_blocks=[1,1,1]",
    "model.stage4.num_modules=1", "model.stage4.num_blocks=[1,1,1,1]",
]


def test_convert_command_line_writes_a_model_and_reports_mismatches(tmp_path, tiny):
    cfg, variables = tiny
    # A reference-named state_dict as .npz (the .pth route needs torch).
    np.savez(tmp_path / "weights.npz", **variables_to_torch_state_dict(variables, cfg))
    sets = [arg for o in TINY_OVERRIDES for arg in ("--set", o)]
    result = _run("convert_checkpoint.py", tmp_path / "weights.npz", "--config", "hrnet_w8",
                  *sets, "--out", tmp_path / "exported", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded, loaded_cfg = model_file.load_model(tmp_path / "exported")
    assert loaded_cfg == cfg
    chex.assert_trees_all_equal(loaded, variables)

    # Plain hrnet_w8 has 4 blocks per branch and 1/4/3 modules: most weights are missing.
    result = _run("convert_checkpoint.py", tmp_path / "weights.npz", "--config", "hrnet_w8",
                  "--out", tmp_path / "wrong", cwd=tmp_path)
    assert result.returncode == 1
    assert "stage3.3.branches.0.0.conv1.weight" in result.stderr
    assert not (tmp_path / "wrong").exists()


def test_predict_command_line_writes_keypoints_json_and_a_picture(tmp_path, tiny):
    cfg, variables = tiny
    model_dir = model_file.save_model(tmp_path / "exported", variables, cfg)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(_image(), cv2.COLOR_RGB2BGR))
    out_dir = tmp_path / "out"
    result = _run("predict.py", "--checkpoint", model_dir, tmp_path / "a.png",
                  tmp_path / "missing.png", "--box", "10,20,40,80", "--box", "50,0,30,30",
                  "--out", out_dir, cwd=tmp_path)
    assert result.returncode == 1  # one of the two images does not exist
    assert "missing.png" in result.stderr
    record = json.loads((out_dir / "a.json").read_text())
    keypoints = np.array(record["keypoints"])
    assert keypoints.shape == (2, 16, 3)
    np.testing.assert_allclose(keypoints[0, 0], [-20, 10, SCORE], atol=1e-2)
    assert record["joint_names"][0] == "r_ankle"
    picture = cv2.imread(str(out_dir / "a_pose.png"))
    assert picture is not None and picture.shape == (120, 90, 3)
