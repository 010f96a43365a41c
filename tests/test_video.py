"""Pose on video: a generated video of moving coloured people read by the hand-set colour
network (its joints land on the colour they read), boxes per frame, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import (
    CHANNEL_OF_JOINT,
    colour_reading_variables,
    small_estimator_config,
)
from hrnet_jax import model_file
from hrnet_jax.config import override
from hrnet_jax.inference import PoseEstimator
from hrnet_jax.video import estimate_video, read_frame_boxes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 128  # square frames: the whole-frame crop is the frame at half size
FRAMES = 12
BLOCK = 16
STEP = 4  # pixels the person moves per frame


def block_centres(frame: int, origin=(20, 30)) -> dict[int, np.ndarray]:
    """Centre (x, y) of each colour's block in a frame: red, green, blue side by side,
    moving right and down by STEP px a frame."""
    x0, y0 = origin
    shift = STEP * frame
    return {0: np.array([x0 + shift, y0 + shift]), 1: np.array([x0 + 40 + shift, y0 + shift]),
            2: np.array([x0 + 20 + shift, y0 + 30 + shift])}


def draw_frame(frame: int, origins=((20, 30),)) -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)  # RGB
    for origin in origins:
        for channel, (cx, cy) in block_centres(frame, origin).items():
            half = BLOCK // 2
            image[cy - half:cy + half, cx - half:cx + half, channel] = 255
    return image


def write_video(path: str, frames: list[np.ndarray], fps: float = 10.0) -> str:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (SIZE, SIZE))
    assert writer.isOpened()
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def colour_estimator():
    cfg = small_estimator_config()
    return PoseEstimator(colour_reading_variables(cfg), cfg, flip_test=False)


@pytest.fixture(scope="module")
def moving_video(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "moving.avi")
    return write_video(path, [draw_frame(i) for i in range(FRAMES)])


def read_back(path: str) -> list[np.ndarray]:
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def read_lines(path: str) -> tuple[dict, list[dict]]:
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    return lines[0], lines[1:]


def test_the_output_video_has_every_frame_at_the_same_size_and_joints_follow_the_person(
        colour_estimator, moving_video, tmp_path):
    out = str(tmp_path / "pose.mp4")
    result = estimate_video(colour_estimator, moving_video, out, batch_size=5, progress=False)
    assert result.frames == FRAMES and result.people == FRAMES and not result.ended_early
    written = read_back(out)
    assert len(written) == FRAMES and all(f.shape == (SIZE, SIZE, 3) for f in written)
    header, people = read_lines(result.keypoints_path)
    assert header["frames"] == FRAMES and len(header["joint_names"]) == 16
    assert [(p["frame"], p["person"]) for p in people] == [(i, 0) for i in range(FRAMES)]
    # The whole 128x128 frame is the crop (64x64 input, 16x16 heatmaps): a heatmap pixel
    # covers 8 frame pixels, so each joint lands within 8 px of its colour's block centre.
    for p in people:
        keypoints = np.asarray(p["keypoints"])
        centres = block_centres(p["frame"])
        for joint, channel in enumerate(CHANNEL_OF_JOINT):
            assert np.abs(keypoints[joint, :2] - centres[channel]).max() <= 8.0, (p["frame"], joint)


def test_boxes_per_frame_give_one_line_per_person_and_frames_without_boxes_are_kept(
        colour_estimator, tmp_path):
    frames = [draw_frame(i, origins=((10, 10), (70, 75))) for i in range(6)]
    video = write_video(str(tmp_path / "two.avi"), frames)
    # Two people in frames 0-3 (boxes around each trio of blocks), nobody in 4 and 5; a
    # box of another category and a low-scoring one are left out. Each padded crop
    # (75 px square around its box) holds its own person's blocks only.
    detections = []
    for i in range(4):
        for x0, y0 in ((10, 10), (70, 75)):
            s = STEP * i
            detections.append({"image_id": i, "category_id": 1, "score": 0.9,
                               "bbox": [x0 - 10 + s, y0 - 10 + s, 60, 50]})
    detections += [{"image_id": 1, "category_id": 2, "score": 0.9, "bbox": [0, 0, 20, 20]},
                   {"image_id": 2, "category_id": 1, "score": 0.01, "bbox": [0, 0, 20, 20]}]
    boxes = str(tmp_path / "boxes.json")
    with open(boxes, "w") as f:
        json.dump(detections, f)
    out = str(tmp_path / "two_pose.avi")
    result = estimate_video(colour_estimator, video, out, boxes_path=boxes, batch_size=3,
                            box_min_score=0.1, progress=False)
    assert result.frames == 6 and result.people == 8
    assert len(read_back(out)) == 6
    _, people = read_lines(result.keypoints_path)
    assert [(p["frame"], p["person"]) for p in people] == [(i, k) for i in range(4) for k in (0, 1)]
    for p in people:
        origin = ((10, 10), (70, 75))[p["person"]]
        red = block_centres(p["frame"], origin)[0]
        right_ankle = np.asarray(p["keypoints"])[0, :2]  # joint 0 reads red
        assert np.abs(right_ankle - red).max() <= 6.0


def test_a_box_file_naming_frames_the_video_lacks_is_refused_before_any_frame(
        colour_estimator, moving_video, tmp_path):
    boxes = str(tmp_path / "late.json")
    with open(boxes, "w") as f:
        json.dump([{"image_id": 3, "bbox": [0, 0, 10, 10]},
                   {"image_id": FRAMES + 7, "bbox": [0, 0, 10, 10]}], f)
    out = tmp_path / "never.mp4"
    with pytest.raises(ValueError, match=rf"names frame\(s\) \[{FRAMES + 7}\].*frames 0 to "
                                         rf"{FRAMES - 1}"):
        estimate_video(colour_estimator, moving_video, str(out), boxes_path=boxes,
                       progress=False)
    assert not out.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "could not be opened|has no frame"),
    (b"not a video at all" * 50, "could not be opened|has no frame"),
])
def test_an_empty_or_unreadable_video_is_refused_naming_it(colour_estimator, tmp_path, content,
                                                           message):
    video = tmp_path / "bad.mp4"
    video.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        estimate_video(colour_estimator, str(video), str(tmp_path / "o.mp4"), progress=False)
    assert str(video) in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        estimate_video(colour_estimator, str(tmp_path / "missing.mp4"),
                       str(tmp_path / "o.mp4"), progress=False)


def test_a_truncated_video_keeps_the_frames_that_could_be_read(colour_estimator, moving_video,
                                                               tmp_path):
    data = open(moving_video, "rb").read()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(data[:int(len(data) * 0.6)])
    out = str(tmp_path / "truncated_pose.mp4")
    result = estimate_video(colour_estimator, str(truncated), out, progress=False)
    assert 0 < result.frames < FRAMES and result.ended_early
    assert len(read_back(out)) == result.frames
    _, people = read_lines(result.keypoints_path)
    assert len(people) == result.frames


def test_frame_boxes_reject_malformed_entries(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"image_id": 0}))
    with pytest.raises(ValueError, match="expected a list"):
        read_frame_boxes(str(path))
    path.write_text(json.dumps([{"image_id": 0, "bbox": [1, 2, 3]}]))
    with pytest.raises(ValueError, match="entry 0 has a bbox of 3 values"):
        read_frame_boxes(str(path))


def test_predict_script_on_a_video_and_a_model_whose_joints_do_not_match_its_dataset(
        moving_video, tmp_path):
    cfg = small_estimator_config()
    model = model_file.save_model(tmp_path / "model", colour_reading_variables(cfg), cfg)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = str(tmp_path / "cli.mp4")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "predict.py"), "--checkpoint", model,
         "--video", moving_video, "--out", out, "--no-flip", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{FRAMES} frames" in proc.stdout and "frames/s" in proc.stdout
    assert len(read_back(out)) == FRAMES and os.path.isfile(out[:-4] + ".jsonl")

    # A 16-joint model saved as a COCO (17-joint) one: refused before any frame.
    coco = override(cfg, {"dataset.name": "coco"})
    bad = model_file.save_model(tmp_path / "bad", colour_reading_variables(cfg), coco)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "predict.py"), "--checkpoint", bad,
         "--video", moving_video, "--out", str(tmp_path / "bad.mp4"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "16" in proc.stderr and "17 joints" in proc.stderr
    assert not os.path.exists(tmp_path / "bad.mp4")


def test_the_onnx_backend_gives_the_jax_backends_keypoints(colour_estimator, moving_video,
                                                            tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    from hrnet_jax.export import load_onnx, to_onnx

    cfg = colour_estimator.cfg
    path = to_onnx(colour_estimator.variables, cfg, str(tmp_path / "colour.onnx"))
    onnx_estimator = PoseEstimator(colour_estimator.variables, cfg, flip_test=False,
                                   heatmaps_fn=load_onnx(path))
    results = [estimate_video(e, moving_video, str(tmp_path / f"{name}.mp4"), progress=False)
               for name, e in (("jax", colour_estimator), ("onnx", onnx_estimator))]
    jax_people, onnx_people = (read_lines(r.keypoints_path)[1] for r in results)
    assert len(jax_people) == len(onnx_people) == FRAMES
    for a, b in zip(jax_people, onnx_people, strict=True):
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-3)
