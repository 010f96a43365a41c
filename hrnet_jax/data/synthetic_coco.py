"""A procedurally rendered COCO-format keypoint set, with person detections beside it.

Each image holds one to three cartoon people (the figures of
:mod:`hrnet_jax.data.synthetic`, with a nose and ears added to the face) over
a cluttered background; people drawn later hide parts of those before them.
The 17 COCO keypoints follow COCO's conventions: ``v = 2`` visible, ``v = 1``
labelled but hidden (by a later person or an occluder), ``v = 0`` with
``x = y = 0`` outside the image or left unlabelled (some people have a few
joints unlabelled on purpose). Some images have a crowd of small people
annotated as one ``iscrowd`` region without keypoints. ``area`` is the person's
visible pixel count and ``bbox`` its visible extent, as COCO's are.

``person_detection_results/synthetic_<valid set>_detections.json`` holds what a
detector might give on the validation images: every person's box jittered,
some twice, plus false positives with low scores, so the detected-box path
(rescoring, OKS NMS, COCO AP) runs as on COCO. Output is a pure function of
the seed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from hrnet_jax.config import parse_image_size
from hrnet_jax.data import synthetic as cartoon
from hrnet_jax.data.coco import COCO_KEYPOINTS, COCODataset, annotation_path, image_path
from hrnet_jax.data.synthetic import (
    HEAD_TOP,
    L_ANKLE,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    R_ANKLE,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    UPPER_NECK,
    generation_settings,
)

TRAIN_SET, VALID_SET = "train2017", "val2017"
DETECTIONS = os.path.join("person_detection_results", f"synthetic_{VALID_SET}_detections.json")
_SPLIT_IDS = {TRAIN_SET: 11, VALID_SET: 12}
_FIRST_ID = {TRAIN_SET: 1, VALID_SET: 1_000_001}
# COCO joints 5..16 from the cartoon's MPII joints.
_BODY = (L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST, L_HIP, R_HIP, L_KNEE,
         R_KNEE, L_ANKLE, R_ANKLE)


def face_points(neck: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(5, 2) nose, left eye, right eye, left ear, right ear of a cartoon head.

    The eyes are where :mod:`~hrnet_jax.data.synthetic` draws them; the nose
    sits between eyes and mouth, the ears on the sides of the head's ellipse.
    """
    axis = top - neck
    length = float(np.hypot(*axis))
    up = axis / max(length, 1e-6)
    left = np.array([-up[1], up[0]])  # towards the person's left
    center = neck + 0.5 * axis
    eyes = center - 0.05 * length * up
    return np.stack([
        center - 0.17 * length * up,
        eyes + 0.17 * length * left, eyes - 0.17 * length * left,
        center + 0.42 * length * left, center - 0.42 * length * left,
    ])


def coco_joints(mpii_joints: np.ndarray) -> np.ndarray:
    """(17, 2) COCO keypoints of a cartoon from its (16, 2) MPII joints."""
    return np.concatenate([face_points(mpii_joints[UPPER_NECK], mpii_joints[HEAD_TOP]),
                           mpii_joints[list(_BODY)]])


def _draw_face_marks(image: np.ndarray, points: np.ndarray, height: float) -> None:
    ear = max(1, int(0.025 * height * cartoon._ONE))
    for p in points[3:5]:
        cv2.circle(image, cartoon._pt(p), ear + cartoon._ONE, (25, 25, 25), -1, cv2.LINE_AA,
                   cartoon._SHIFT)
        cv2.circle(image, cartoon._pt(p), ear, (150, 170, 220), -1, cv2.LINE_AA, cartoon._SHIFT)
    cv2.circle(image, cartoon._pt(points[0]), max(1, int(0.015 * height * cartoon._ONE)),
               (60, 60, 140), -1, cv2.LINE_AA, cartoon._SHIFT)


def _place(rng: np.random.Generator, width: int, height: int, person: float,
           center: np.ndarray) -> np.ndarray:
    local = cartoon.sample_pose(rng, person)
    theta = math.radians(rng.normal(0.0, 12.0))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    local = local @ rot.T
    lo, hi = local.min(axis=0), local.max(axis=0)
    return local - (lo + hi) / 2 + center


def _draw(rng: np.random.Generator, image: np.ndarray, joints16: np.ndarray, person: float
          ) -> tuple[np.ndarray, np.ndarray]:
    """Draws one person; returns its (17, 2) COCO keypoints and (H, W) mask of changed pixels."""
    before = image.copy()
    cartoon.draw_person(rng, image, joints16, person)
    points = coco_joints(joints16)
    _draw_face_marks(image, points, person)
    return points, (image != before).any(axis=-1)


def _covered(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    xi, yi = np.round(points[:, 0]).astype(int), np.round(points[:, 1]).astype(int)
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    hidden = np.zeros(len(points), bool)
    hidden[inside] = mask[yi[inside], xi[inside]]
    return hidden


def render_image(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[dict]]:
    """One image and its annotations.

    Returns:
      ``(image (height, width, 3) uint8 BGR, people)``: each person a dict with
      ``keypoints`` (17, 3) as COCO stores them (x, y, v), ``bbox`` (x, y, w, h),
      ``area`` and ``iscrowd``.
    """
    image = cartoon.make_background(rng, width, height)
    size = min(width, height)
    cartoon._distractors(rng, image, 0.5 * size)
    people: list[dict[str, Any]] = []
    masks: list[np.ndarray] = []
    points_all: list[np.ndarray] = []

    if rng.random() < 0.25:  # a crowd of small people far away, one iscrowd region
        crowd = np.zeros((height, width), bool)
        base = rng.uniform((0.2 * width, 0.2 * height), (0.8 * width, 0.8 * height))
        for _ in range(int(rng.integers(3, 6))):
            small = rng.uniform(0.12, 0.2) * size
            joints16 = _place(rng, width, height, small, base + rng.normal(0, 0.06 * size, 2))
            _, mask = _draw(rng, image, joints16, small)
            crowd |= mask
        ys, xs = np.nonzero(crowd)
        if len(xs):
            people.append({"crowd_mask": crowd, "iscrowd": 1})
            masks.append(crowd)
            points_all.append(np.zeros((0, 2)))

    count = int(rng.integers(1, 4))
    centers = rng.uniform((0.2 * width, 0.3 * height), (0.8 * width, 0.7 * height), size=(count, 2))
    for k in range(count):
        person = rng.uniform(0.45, 0.85) * height
        joints16 = _place(rng, width, height, person, centers[k])
        points, mask = _draw(rng, image, joints16, person)
        people.append({"iscrowd": 0})
        masks.append(mask)
        points_all.append(points)
    occluders = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        c = rng.uniform((0, 0), (width, height))
        half = rng.uniform(0.04, 0.1, size=2) * size
        p1, p2 = cartoon._pt(c - half), cartoon._pt(c + half)
        cv2.rectangle(image, p1, p2, cartoon._random_color(rng), -1, cv2.LINE_AA, cartoon._SHIFT)
        cv2.rectangle(occluders, p1, p2, 255, -1, cv2.LINE_8, cartoon._SHIFT)

    out = []
    for k, (info, mask, points) in enumerate(zip(people, masks, points_all, strict=True)):
        later = np.zeros_like(mask)
        for other in masks[k + 1:]:
            later |= other
        visible_mask = mask & ~later & (occluders == 0)
        ys, xs = np.nonzero(visible_mask)
        if len(xs) == 0:
            continue
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1)]
        keypoints = np.zeros((COCO_KEYPOINTS.num_joints, 3))
        if not info["iscrowd"]:
            inside = ((points[:, 0] >= 0) & (points[:, 0] <= width - 1)
                      & (points[:, 1] >= 0) & (points[:, 1] <= height - 1))
            hidden = _covered(later | (occluders > 0), points)
            v = np.where(inside, np.where(hidden, 1, 2), 0)
            if rng.random() < 0.15:  # a few joints left unlabelled, as annotators do
                v[rng.choice(len(v), size=int(rng.integers(1, 4)), replace=False)] = 0
            keypoints[:, :2] = np.where(v[:, None] > 0, points, 0.0)
            keypoints[:, 2] = v
        out.append({"keypoints": keypoints, "bbox": bbox, "area": float(len(xs)),
                    "iscrowd": int(info["iscrowd"])})
    return image, out


def _detections(rng: np.random.Generator, image_id: int, people: list[dict], width: int,
                height: int) -> list[dict]:
    dets = []
    for p in people:
        if p["iscrowd"]:
            continue
        x, y, w, h = p["bbox"]
        for copy in range(2 if rng.random() < 0.3 else 1):
            jitter = 0.05 * (1 + 2 * copy)
            dx, dy = rng.normal(0, jitter, 2) * (w, h)
            sw, sh = np.clip(rng.normal(1.0, jitter, 2), 0.7, 1.3)
            score = rng.uniform(0.6, 1.0) * (0.7 if copy else 1.0)
            dets.append({"image_id": image_id, "category_id": 1, "score": round(float(score), 4),
                         "bbox": [round(float(v), 2) for v in (x + dx, y + dy, w * sw, h * sh)]})
    for _ in range(int(rng.integers(0, 3))):  # false positives
        w, h = rng.uniform(0.1, 0.4, 2) * (width, height)
        x, y = rng.uniform(0, 1, 2) * (width - w, height - h)
        dets.append({"image_id": image_id, "category_id": 1,
                     "score": round(float(rng.uniform(0.05, 0.5)), 4),
                     "bbox": [round(float(v), 2) for v in (x, y, w, h)]})
    return dets


def _render_and_write(job: tuple[int, str, int, int, int, str, int]
                      ) -> tuple[int, str, list[dict], list[dict]]:
    """Renders image ``i`` of ``image_set`` and writes its JPEG; ``(id, path, people,
    detections)``, the detections only for the validation set."""
    seed, image_set, i, width, height, root, jpeg_quality = job
    rng = np.random.default_rng([seed, _SPLIT_IDS[image_set], i])
    image, people = render_image(rng, width, height)
    image_id = _FIRST_ID[image_set] + i
    path = image_path(root, image_set, image_id)
    if not cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
        raise OSError(f"could not write {path!r}")
    detections = (_detections(rng, image_id, people, width, height) if image_set == VALID_SET
                  else [])
    return image_id, path, people, detections


def write_synthetic_coco(root: str, *, num_train: int, num_valid: int, seed: int = 0,
                         image_size: int | Sequence[int] = (320, 256), jpeg_quality: int = 92,
                         processes: int | None = None) -> str:
    """Renders a synthetic set into ``root`` in the COCO layout; returns ``root``.

    Writes ``images/{train2017,val2017}/%012d.jpg``,
    ``annotations/person_keypoints_{train2017,val2017}.json`` and the
    validation detections (module docstring). Image ``i`` of a split depends
    only on ``(seed, split, i)``. ``processes``: rendering processes (None: one
    per core, for 64 images or more); the files do not depend on it.
    """
    width, height = parse_image_size(image_size)
    if min(width, height) < 64:
        raise ValueError(f"image_size {image_size}: each side must be at least 64 pixels")
    category = {"id": 1, "name": "person", "supercategory": "person",
                "keypoints": [n.replace("l_", "left_").replace("r_", "right_")
                              for n in COCO_KEYPOINTS.joint_names],
                "skeleton": [[a + 1, b + 1] for a, b in COCO_KEYPOINTS.skeleton]}
    total = int(num_train) + int(num_valid)
    workers = cartoon.default_processes(total) if processes is None else int(processes)
    detections: list[dict] = []
    for image_set, count in ((TRAIN_SET, num_train), (VALID_SET, num_valid)):
        os.makedirs(os.path.dirname(image_path(root, image_set, 0)), exist_ok=True)
        jobs = [(int(seed), image_set, i, width, height, root, int(jpeg_quality))
                for i in range(int(count))]
        images, annotations = [], []
        for image_id, path, people, found in cartoon.map_in_processes(_render_and_write, jobs,
                                                                      workers):
            images.append({"id": image_id, "file_name": os.path.basename(path),
                           "width": width, "height": height})
            for p in people:
                annotations.append({
                    "id": len(annotations) + 1 + 10_000_000 * _SPLIT_IDS[image_set],
                    "image_id": image_id, "category_id": 1, "iscrowd": p["iscrowd"],
                    "bbox": p["bbox"], "area": p["area"],
                    "keypoints": [round(float(v), 2) for v in p["keypoints"].reshape(-1)],
                    "num_keypoints": int(np.sum(p["keypoints"][:, 2] > 0)),
                })
            detections += found
        path = annotation_path(root, image_set)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": [category]}, f)
    path = os.path.join(root, DETECTIONS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(detections, f)
    return root


def ensure_synthetic_coco(root: str, *, num_train: int = 2000, num_valid: int = 300,
                          seed: int = 0, image_size: int | Sequence[int] = (320, 256),
                          processes: int | None = None) -> str:
    """Generates the synthetic COCO-format set into ``root`` once and reuses it afterwards
    (``processes``: as :func:`write_synthetic_coco`'s, not part of the parameters)."""
    params = {"kind": "coco", "num_train": int(num_train), "num_valid": int(num_valid),
              "seed": int(seed), "image_size": list(parse_image_size(image_size)), "version": 1}
    return cartoon.ensure_generated(
        root, params, ("images", "annotations", "person_detection_results"),
        lambda: write_synthetic_coco(root, num_train=num_train, num_valid=num_valid, seed=seed,
                                     image_size=image_size, processes=processes))


class SyntheticCOCODataset(COCODataset):
    """The generated COCO-format set (``dataset.name = "synthetic_coco"``): COCO's reader,
    joints and AP on images made once into ``cfg.dataset.root`` by
    :func:`ensure_synthetic_coco`. Testing on detected boxes reads the generated
    detections unless ``test.coco_bbox_file`` names an existing file."""

    help = ("Generated by scripts/make_synthetic_coco.py, or by training with "
            "--dataset synthetic_coco.")
    default_root = "data/synthetic_coco"

    @classmethod
    def prepare(cls, cfg: Any) -> str:
        return ensure_synthetic_coco(cfg.dataset.root, **generation_settings(cfg))

    def detections_path(self) -> str:
        """``test.coco_bbox_file`` when it names an existing file, else the generated detections."""
        given = super().detections_path()
        return given if given and os.path.isfile(given) else os.path.join(self.root, DETECTIONS)
