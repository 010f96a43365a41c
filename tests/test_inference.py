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

from hrnet_jax import model_file
from hrnet_jax.config import StageConfig, get_config
from hrnet_jax.convert import variables_to_torch_state_dict
from hrnet_jax.inference import (
    PoseEstimator,
    box_to_center_scale,
    check_boxes,
    draw_keypoints,
    read_image,
)
from hrnet_jax.models import build_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCORE = 0.5


def _tiny_config(image_size=(64, 64)):
    cfg = get_config("hrnet_w8")
    model = dataclasses.replace(
        cfg.model, image_size=image_size, heatmap_size=(image_size[0] // 4, image_size[1] // 4),
        stage2=StageConfig(1, 2, (1, 1), (8, 16)),
        stage3=StageConfig(1, 3, (1, 1, 1), (8, 16, 32)),
        stage4=StageConfig(1, 4, (1, 1, 1, 1), (8, 16, 32, 64)),
    )
    return dataclasses.replace(cfg, model=model)


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


def test_a_single_box_may_be_given_flat_and_results_do_not_depend_on_batch_padding(estimator):
    image = _image()
    alone = estimator(image, [5, 5, 60, 60])
    together = estimator(image, [[5, 5, 60, 60], [1, 2, 3, 4], [7, 7, 20, 30]])
    chex.assert_shape(alone, (1, 16, 3))
    np.testing.assert_allclose(together[:1], alone, rtol=1e-6)


def test_image_is_read_from_a_path_as_rgb(tmp_path, estimator):
    image = _image()
    path = tmp_path / "person.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(path), image)
    np.testing.assert_allclose(estimator(str(path), [10, 20, 40, 80]),
                               estimator(image, [10, 20, 40, 80]), rtol=1e-6)


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
