"""Pose on video: every frame's people cropped, estimated in batches across frames, drawn.

:func:`estimate_video` reads a video with OpenCV, takes the person boxes of
each frame from a detections file (COCO results format, ``image_id`` = the
frame index from 0) or the whole frame, runs a :class:`~hrnet_jax.inference.PoseEstimator`
on the crops of several frames at once, and writes the video with skeletons
drawn plus the keypoints as JSON lines. Everything that can be checked is
checked before the first frame is processed; a video that ends early keeps
what was written.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping

import cv2
import numpy as np

from hrnet_jax.crop import check_boxes
from hrnet_jax.data.base import read_json
from hrnet_jax.inference import PoseEstimator, draw_keypoints

logger = logging.getLogger(__name__)

# Codecs OpenCV's own builds can write, by container.
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


@dataclasses.dataclass
class VideoResult:
    """What :func:`estimate_video` wrote."""

    frames: int
    people: int
    seconds: float
    video_path: str
    keypoints_path: str
    ended_early: bool = False

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


class VideoInput:
    """An opened video: frames as (H, W, 3) uint8 RGB, with its size, rate and frame count.

    Raises:
      ValueError: the file does not exist, OpenCV cannot open it, or it has
        no frame.
    """

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise ValueError(f"video {path!r} does not exist")
        self.path = path
        self._capture = cv2.VideoCapture(path)
        if not self._capture.isOpened():
            raise ValueError(f"video {path!r} could not be opened (not a video OpenCV reads)")
        ok, first = self._capture.read()
        if not ok or first is None or first.size == 0:
            self._capture.release()
            raise ValueError(f"video {path!r} has no frame to read (empty or unreadable)")
        self._first: np.ndarray | None = first
        self.height, self.width = first.shape[:2]
        fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        self.fps = fps if np.isfinite(fps) and fps > 0 else 25.0
        # Containers may not know it (0); then boxes are checked as frames come.
        self.frame_count = max(0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)))

    def frames(self) -> Iterator[np.ndarray]:
        """The frames in order, RGB."""
        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield cv2.cvtColor(first, cv2.COLOR_BGR2RGB)
            while True:
                ok, frame = self._capture.read()
                if not ok or frame is None:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            self._capture.release()


def read_frame_boxes(path: str, frame_count: int = 0, *, min_score: float = 0.0
                     ) -> dict[int, np.ndarray]:
    """Person boxes per frame from a COCO results file whose ``image_id`` is the frame index.

    Entries of another ``category_id`` than 1 (person), and those scoring below
    ``min_score``, are left out.

    Returns:
      frame index -> (P, 4) float64 boxes (x, y, w, h).

    Raises:
      ValueError: the file is missing, not a list of ``{image_id, bbox}``, or
        names frames outside ``[0, frame_count)`` (when the count is known),
        listing them.
    """
    try:
        entries = read_json(path, "boxes file")
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    if not isinstance(entries, list):
        raise ValueError(f"boxes file {path!r}: expected a list of {{image_id, bbox, score}} "
                         "(COCO results format, image_id = frame index)")
    boxes: dict[int, list[list[float]]] = collections.defaultdict(list)
    for k, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "image_id" not in entry or "bbox" not in entry:
            raise ValueError(f"boxes file {path!r}: entry {k} lacks image_id or bbox")
        if int(entry.get("category_id", 1)) != 1 or float(entry.get("score", 1.0)) < min_score:
            continue
        bbox = [float(v) for v in entry["bbox"]]
        if len(bbox) != 4:
            raise ValueError(f"boxes file {path!r}: entry {k} has a bbox of {len(bbox)} values, "
                             "expected x, y, w, h")
        boxes[int(entry["image_id"])].append(bbox)
    if frame_count:
        outside = sorted(i for i in boxes if not 0 <= i < frame_count)
        if outside:
            raise ValueError(f"boxes file {path!r} names frame(s) {outside[:10]} but the video has "
                             f"frames 0 to {frame_count - 1}")
    return {i: np.asarray(b, np.float64) for i, b in boxes.items()}


def _writer(path: str, fps: float, width: int, height: int) -> cv2.VideoWriter:
    ext = os.path.splitext(path)[1].lower()
    codec = _FOURCC.get(ext, "mp4v")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise ValueError(f"cannot write the video {path!r} (codec {codec!r}; use .mp4 or .avi)")
    return writer


def estimate_video(estimator: PoseEstimator, video_path: str, out_path: str, *,
                   keypoints_path: str | None = None, boxes_path: str | None = None,
                   batch_size: int = 32, min_score: float = 0.0, box_min_score: float = 0.0,
                   progress: bool = True) -> VideoResult:
    """Estimates the pose of the people in every frame of ``video_path``.

    Args:
      estimator: the model.
      video_path: any video OpenCV reads.
      out_path: the video written with the skeletons drawn (same size and frame
        rate; ``.mp4`` as MPEG-4 part 2, ``.avi`` as Motion JPEG).
      keypoints_path: JSON lines (default ``out_path`` with ``.jsonl``): a
        first line describing the video and the joints, then one line per
        person and frame, ``{"frame", "person", "box", "keypoints": [[x, y,
        score] per joint]}``.
      boxes_path: person boxes per frame (:func:`read_frame_boxes`); None
        takes each whole frame as one person.
      batch_size: crops run through the network together, across frames.
      min_score: joints scoring below this are not drawn.
      box_min_score: boxes scoring below this are left out.
      progress: show a progress bar.

    Returns:
      A :class:`VideoResult`.

    Raises:
      ValueError: an unreadable or empty video, a bad boxes file, an
        unwritable output; raised before any frame is processed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    video = VideoInput(video_path)
    frame_boxes = (read_frame_boxes(boxes_path, video.frame_count, min_score=box_min_score)
                   if boxes_path else None)
    for index, boxes in (frame_boxes or {}).items():
        try:
            check_boxes(boxes, (video.height, video.width))
        except ValueError as e:
            raise ValueError(f"boxes file {boxes_path!r}, frame {index}: {e}") from None
    keypoints_path = keypoints_path or os.path.splitext(out_path)[0] + ".jsonl"
    writer = _writer(out_path, video.fps, video.width, video.height)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=video.frame_count or None, desc="frames", unit="frame")
    frames = people = 0
    ended_early = False
    start = time.perf_counter()
    pending: list[tuple[int, np.ndarray, np.ndarray | None, int]] = []
    batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def flush() -> None:
        nonlocal frames, people
        if batch:
            keypoints = estimator.predict_crops(np.concatenate([b[0] for b in batch]),
                                                np.concatenate([b[1] for b in batch]),
                                                np.concatenate([b[2] for b in batch]))
        else:
            keypoints = np.zeros((0, estimator.num_joints, 3), np.float32)
        row = 0
        for index, rgb, boxes, count in pending:
            mine = keypoints[row:row + count]
            row += count
            picture = draw_keypoints(rgb, mine, estimator.joints, min_score=min_score)
            writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            for p, person in enumerate(mine):
                lines.write(json.dumps({
                    "frame": index, "person": p,
                    "box": None if boxes is None else [round(float(v), 2) for v in boxes[p]],
                    "keypoints": np.round(person.astype(np.float64), 3).tolist()}) + "\n")
            frames += 1
            people += count
            if bar is not None:
                bar.update(1)
        lines.flush()
        pending.clear()
        batch.clear()

    with open(keypoints_path, "w") as lines:
        lines.write(json.dumps({
            "video": os.path.abspath(video_path), "width": video.width, "height": video.height,
            "fps": video.fps, "frames": video.frame_count,
            "joint_names": list(estimator.joints.joint_names)}) + "\n")
        try:
            crops = 0
            for index, rgb in enumerate(video.frames()):
                boxes = None
                if frame_boxes is not None:
                    boxes = frame_boxes.get(index, np.zeros((0, 4)))
                    if len(boxes) == 0:
                        pending.append((index, rgb, boxes, 0))
                        continue
                inputs, center, scale = estimator.crops(rgb, boxes)
                batch.append((inputs, center, scale))
                pending.append((index, rgb, boxes, len(inputs)))
                crops += len(inputs)
                if crops >= batch_size or len(pending) >= 4 * batch_size:
                    flush()
                    crops = 0
            flush()
        finally:
            writer.release()
            if bar is not None:
                bar.close()
    if video.frame_count and frames < video.frame_count:
        ended_early = True
        logger.warning("%s ended at frame %d of the %d its header announces; the %d frames read "
                       "were written", video_path, frames, video.frame_count, frames)
    return VideoResult(frames=frames, people=people, seconds=time.perf_counter() - start,
                       video_path=out_path, keypoints_path=keypoints_path,
                       ended_early=ended_early)
