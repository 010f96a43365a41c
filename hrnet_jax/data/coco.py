"""COCO keypoints: the layout, ground-truth and detected-box records, and COCO AP.

Layout under ``root`` (the reference's)::

    annotations/person_keypoints_{train2017,val2017}.json
    images/{train2017,val2017}/%012d.jpg
    person_detection_results/COCO_val2017_detections_AP_H_56_person.json   (optional)

Training and, with ``test.use_gt_bbox``, validation use one record per person
annotation; otherwise validation uses one record per detected person box of
``test.coco_bbox_file``. Predictions are rescored by their joints' confidence,
OKS-NMSed per image and scored with pycocotools' COCOeval (see
:meth:`COCODataset.evaluate`).
"""

from __future__ import annotations

import collections
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hrnet_jax.constants import PIXEL_STD
from hrnet_jax.crop import box_to_center_scale
from hrnet_jax.data.base import JointsDataset, read_json
from hrnet_jax.data.keypoints import Keypoints

logger = logging.getLogger(__name__)

COCO_KEYPOINTS = Keypoints(
    joint_names=(
        "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
        "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle",
        "r_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    upper_body_ids=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
    # COCO's own skeleton (its annotation files list it 1-based).
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
        (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    # Divided as the reference divides them, so OKS agrees to the last bit.
    sigmas=tuple((np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                            .87, .87, .89, .89]) / 10.0).tolist()),
)

COCO_HELP = (
    "Expected the COCO layout:\n"
    "  ROOT/annotations/person_keypoints_{train2017,val2017}.json\n"
    "  ROOT/images/{train2017,val2017}/000000000139.jpg ...\n"
    "  ROOT/person_detection_results/COCO_val2017_detections_AP_H_56_person.json "
    "(testing on detected boxes only)\n"
    "To obtain COCO: the 2017 train/val images and annotations from https://cocodataset.org "
    "(Download); the person detections from the reference implementation's README "
    "(leoxiaobin/deep-high-resolution-net.pytorch, 'Data preparation'). To try everything "
    "without COCO, use a generated COCO-format set: --dataset synthetic_coco "
    "(scripts/make_synthetic_coco.py)."
)


def annotation_path(root: str, image_set: str) -> str:
    """``ROOT/annotations/person_keypoints_<set>.json`` (``image_info_<set>.json`` for test sets)."""
    prefix = "image_info" if "test" in image_set else "person_keypoints"
    return os.path.join(root, "annotations", f"{prefix}_{image_set}.json")


def image_path(root: str, image_set: str, image_id: int) -> str:
    """``ROOT/images/<set>/%012d.jpg`` (2014 sets prefix ``COCO_<set>_``; test sets read test2017)."""
    name = f"{int(image_id):012d}.jpg"
    if "2014" in image_set:
        name = f"COCO_{image_set}_{name}"
    folder = "test2017" if "test" in image_set else image_set
    return os.path.join(root, "images", folder, name)


def clean_box(box: Any, width: float, height: float) -> tuple[float, float, float, float] | None:
    """A COCO box (x, y, w, h) clipped to the image as the reference cleans it, or None.

    ``x1 = max(0, x)``, ``y1 = max(0, y)``, ``x2 = min(W - 1, x1 + max(0, w - 1))``,
    ``y2 = min(H - 1, y1 + max(0, h - 1))``; kept (as ``(x1, y1, x2 - x1, y2 - y1)``)
    when ``x2 >= x1`` and ``y2 >= y1``. (The reference also requires the
    annotation's ``area > 0``; :func:`person_records` checks that.)
    """
    x, y, w, h = (float(v) for v in box)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1, x1 + max(0.0, w - 1))
    y2 = min(height - 1, y1 + max(0.0, h - 1))
    if x2 >= x1 and y2 >= y1:
        return x1, y1, x2 - x1, y2 - y1
    return None


def read_annotations(path: str, help: str = COCO_HELP) -> dict[str, Any]:
    """The COCO JSON at ``path``, checked for ``images``, ``annotations`` and a person category.

    ``help`` (where the files come from) follows the message when the file is missing.
    """
    data = read_json(path, "COCO annotation file", f".\n{help}")
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"COCO annotation file {path!r}: expected an object with 'images', "
                         "'annotations' and 'categories'")
    person_category_id(data, path)
    return data


def person_category_id(data: Mapping[str, Any], path: str) -> int:
    """The id of the category named ``person`` (ValueError naming ``path`` if there is none)."""
    for category in data.get("categories", []):
        if category.get("name") == "person":
            return int(category["id"])
    names = [c.get("name") for c in data.get("categories", [])]
    raise ValueError(f"COCO annotation file {path!r} has no 'person' category (categories: "
                     f"{names}); keypoint annotations of people are needed")


def person_records(data: Mapping[str, Any], *, image_file: Callable[[Mapping[str, Any]], str],
                   image_size: tuple[int, int], num_joints: int, path: str
                   ) -> list[dict[str, Any]]:
    """One record per usable person annotation, in image order, as the reference builds them.

    Crowd annotations and other categories are skipped, as are annotations
    whose keypoints are all zero and boxes that clean away
    (:func:`clean_box`, ``area > 0``). Joints keep their (x, y);
    ``joints_vis = min(1, v)``. Centre and scale come from the cleaned box
    fitted to the input's aspect ratio and padded 1.25x. ``image_file`` maps an
    entry of the JSON's ``images`` to its path.
    """

    person = person_category_id(data, path)
    images = {int(im["id"]): im for im in data["images"]}
    by_image: dict[int, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for k, ann in enumerate(data.get("annotations", [])):
        if ann.get("iscrowd", 0):
            continue
        image_id = int(ann["image_id"])
        if image_id not in images:
            raise ValueError(f"{path}: annotation {ann.get('id', k)} names image {image_id}, "
                             "which is not in 'images'")
        by_image[image_id].append(ann)

    records = []
    for image_id, image in images.items():
        kept = []
        for ann in by_image.get(image_id, []):
            box = clean_box(ann["bbox"], image["width"], image["height"])
            if ann.get("area", 0) > 0 and box is not None:
                kept.append((ann, box))
        for ann, box in kept:
            if int(ann["category_id"]) != person:
                continue
            values = np.asarray(ann.get("keypoints", []), dtype=np.float64)
            if values.shape != (3 * num_joints,):
                raise ValueError(f"{path}: annotation {ann.get('id')} (image {image_id}) has "
                                 f"{values.size} keypoint values, expected 3 x {num_joints} = "
                                 f"{3 * num_joints}")
            if values.max() == 0:
                continue
            values = values.reshape(num_joints, 3)
            joints = np.zeros((num_joints, 3))
            joints[:, :2] = values[:, :2]
            vis = np.minimum(values[:, 2], 1.0)
            center, scale = box_to_center_scale([box], image_size)
            records.append({
                "image": image_file(image),
                "image_id": image_id,
                "center": center[0],
                "scale": scale[0],
                "joints_3d": joints,
                "joints_3d_vis": np.stack([vis, vis, np.zeros(num_joints)], axis=-1),
                "filename": "",
                "imgnum": 0,
            })
    return records


def detection_records(path: str, *, images: Mapping[int, Mapping[str, Any]],
                      image_file: Callable[[Mapping[str, Any]], str],
                      image_size: tuple[int, int], num_joints: int, image_thre: float
                      ) -> list[dict[str, Any]]:
    """One record per detected person box (category 1, ``score >= image_thre``), in file order.

    Joints are zeros with visibility one, as the reference fills them (their
    loss means nothing); ``score`` is the detector's. Boxes naming images the
    annotation file does not have are skipped with a warning and a count.
    """

    detections = read_json(path, "person detections file",
                           " (test.coco_bbox_file); give the file or set test.use_gt_bbox=true "
                           "to test on the ground-truth boxes")
    if not isinstance(detections, list) or not detections:
        raise ValueError(f"person detections {path!r}: expected a non-empty list of "
                         "{image_id, category_id, bbox, score} (COCO results format)")
    records, unknown, low = [], 0, 0
    for det in detections:
        if int(det.get("category_id", 1)) != 1:
            continue
        if float(det["score"]) < image_thre:
            low += 1
            continue
        image_id = int(det["image_id"])
        if image_id not in images:
            unknown += 1
            continue
        center, scale = box_to_center_scale([det["bbox"]], image_size)
        records.append({
            "image": image_file(images[image_id]),
            "image_id": image_id,
            "center": center[0],
            "scale": scale[0],
            "score": float(det["score"]),
            "joints_3d": np.zeros((num_joints, 3)),
            "joints_3d_vis": np.ones((num_joints, 3)),
            "filename": "",
            "imgnum": 0,
        })
    if unknown:
        logger.warning("%s: %d detection(s) name images that are not in the annotation file; "
                       "skipped", path, unknown)
    if not records:
        raise ValueError(f"person detections {path!r}: no person box left (scores below "
                         f"test.image_thre={image_thre}: {low}; unknown images: {unknown})")
    logger.info("=> %d person boxes from %s (%d below score %s, %d for unknown images)",
                len(records), path, low, image_thre, unknown)
    return records


class COCODataset(JointsDataset):
    """COCO keypoints (17 joints), scored by COCO AP; the best model has the highest ``AP``.

    ``test.use_gt_bbox`` (validation only) chooses ground-truth boxes or the
    detections of ``test.coco_bbox_file`` (a relative path is looked for
    relative to the working directory, then under ``root``), filtered by
    ``test.image_thre``. See :class:`~hrnet_jax.data.base.JointsDataset` for
    the samples and arguments.

    A COCO-format dataset with other joints or another layout subclasses this
    and sets :attr:`keypoints` (with its OKS sigmas), and if need be
    :meth:`annotation_file` and :meth:`image_file`.
    """

    keypoints = COCO_KEYPOINTS
    headline_metric = "AP"
    help = COCO_HELP
    default_root = "data/coco"

    def annotation_file(self) -> str:
        """The split's annotation JSON (COCO: ``ROOT/annotations/person_keypoints_<set>.json``)."""
        return annotation_path(self.root, self.image_set)

    def image_file(self, image: Mapping[str, Any]) -> str:
        """The path of an entry of the JSON's ``images`` (COCO: ``ROOT/images/<set>/%012d.jpg``
        from its id, as the reference names them)."""
        return image_path(self.root, self.image_set, int(image["id"]))

    def load_records(self) -> list[dict[str, Any]]:
        path = self.annotation_file()
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"{type(self).__name__} root {self.root!r} does not exist."
                                    f"\n{self.help}")
        data = read_annotations(path, self.help)
        # Test sets (COCO's image_info_test-dev2017.json) list images only.
        self.has_ground_truth = bool(data.get("annotations"))
        image_size = tuple(self.spec.image_size)
        if self.is_train or self.cfg.test.use_gt_bbox:
            records = person_records(data, image_file=self.image_file, image_size=image_size,
                                     num_joints=self.spec.num_joints, path=path)
        else:
            records = detection_records(
                self.detections_path(), images={int(im["id"]): im for im in data["images"]},
                image_file=self.image_file, image_size=image_size,
                num_joints=self.spec.num_joints, image_thre=float(self.cfg.test.image_thre))
        if not records:
            raise ValueError(f"{path}: no usable person annotation (crowd, empty or "
                             "zero-keypoint annotations are skipped)")
        return records

    def detections_path(self) -> str:
        path = self.cfg.test.coco_bbox_file
        if path and not os.path.isabs(path) and not os.path.exists(path):
            path = os.path.join(self.root, path)
        return path

    def describe(self) -> str:
        return self.annotation_file()

    def results_path(self, output_dir: str) -> str:
        """Where :meth:`evaluate` writes the COCO results JSON (the reference's name)."""
        return os.path.join(output_dir, "results", f"keypoints_{self.image_set}_results_0.json")

    def evaluate(self, preds: np.ndarray, output_dir: str | None = None
                 ) -> collections.OrderedDict[str, Any] | None:
        """COCO keypoint AP of ``preds`` (N, 17, 3), as the reference evaluates.

        Each person's score becomes its box score (1 for ground-truth boxes)
        times the mean of its joint scores above ``test.in_vis_thre``; per image,
        OKS NMS (or soft OKS NMS with ``test.soft_nms``) at ``test.oks_thre``
        keeps the people whose OKS to a better-scored one is at most the
        threshold; pycocotools' COCOeval scores the rest against the split's
        annotations. With ``output_dir``, the results are written as
        ``results/keypoints_<set>_results_0.json`` there. Returns the ten
        COCOeval statistics (``AP``, ``Ap .5``, ..., ``AR (L)``), or None for a
        split whose annotation file has no annotations (COCO's test-dev, which
        the reference recognises by the ``test`` in its name).
        """
        from hrnet_jax.metrics import coco_evaluate

        results = self.results(preds)
        if output_dir is not None:
            path = self.results_path(output_dir)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(results, f)
        if not self.has_ground_truth:
            return None
        return coco_evaluate(results, self.annotation_file(), sigmas=self.keypoints.sigmas)

    def results(self, preds: np.ndarray) -> list[dict[str, Any]]:
        """``preds`` (N, J, 3) -> COCO result dicts after rescoring and per-image OKS NMS."""
        from hrnet_jax.metrics import oks_nms, rescore_by_keypoints, soft_oks_nms

        preds = np.asarray(preds, dtype=np.float64)
        n = len(self.db)
        if preds.shape != (n, self.spec.num_joints, 3):
            raise ValueError(f"preds: expected shape (N, J, 3) = {(n, self.spec.num_joints, 3)} "
                             f"for {self.describe()}, got {preds.shape}")
        test = self.cfg.test
        box_scores = np.array([float(r.get("score", 1.0)) for r in self.db])
        scores = rescore_by_keypoints(preds, box_scores, float(test.in_vis_thre))
        scale = np.array([r["scale"] for r in self.db], dtype=np.float64)
        center = np.array([r["center"] for r in self.db], dtype=np.float64)
        areas = np.prod(scale * PIXEL_STD, axis=1)
        # Rows of each image, images in order of first appearance (one pass, not one
        # scan of all rows per image: COCO's detections are ~100k boxes on 5k images).
        rows_of: dict[int, list[int]] = collections.defaultdict(list)
        for row, record in enumerate(self.db):
            rows_of[int(record["image_id"])].append(row)
        nms = soft_oks_nms if test.soft_nms else oks_nms
        sigmas = np.asarray(self.keypoints.sigmas) if self.keypoints.sigmas else None
        results = []
        for image_id, image_rows in rows_of.items():
            rows = np.asarray(image_rows)
            keep = nms(preds[rows], scores[rows], areas[rows], float(test.oks_thre),
                       sigmas=sigmas)
            for row in (rows[list(keep)] if len(keep) else rows):
                results.append({
                    "image_id": int(image_id),
                    "category_id": 1,
                    "keypoints": preds[row].reshape(-1).tolist(),
                    "score": float(scores[row]),
                    "center": center[row].tolist(),
                    "scale": scale[row].tolist(),
                })
        return results
