"""MPII annotations: the on-disk layout, record conversion and the dataset.

Layout under ``root``::

    images/*.jpg
    annot/train.json, annot/valid.json, annot/test.json
    annot/gt_valid.mat          (ground truth for the PCKh table)

Each JSON record has ``image``, ``center`` (x, y), ``scale`` (person height / 200),
``joints`` (16 x 2, MATLAB 1-based) and ``joints_vis`` (16); the test split has
no joints. Records are converted as the reference does (see :func:`convert_record`).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hrnet_jax.data.base import JointsDataset, read_json
from hrnet_jax.data.keypoints import Keypoints
from hrnet_jax.images import BadImageError

__all__ = ["MPII_KEYPOINTS", "MPIIDataset", "BadImageError", "convert_record",
           "load_records", "mpii_gt_path"]

MPII_KEYPOINTS = Keypoints(
    joint_names=(
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
        "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder",
        "l_elbow", "l_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    upper_body_ids=(7, 8, 9, 10, 11, 12, 13, 14, 15),
    skeleton=(
        (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
        (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15),
    ),
)
MPII_NUM_JOINTS = MPII_KEYPOINTS.num_joints

MPII_HELP = (
    "Expected the MPII layout:\n"
    "  ROOT/images/*.jpg\n"
    "  ROOT/annot/{train,valid,test}.json\n"
    "  ROOT/annot/gt_valid.mat\n"
    "To obtain MPII: download the images from the MPII Human Pose Dataset site "
    "(http://human-pose.mpi-inf.mpg.de/) and the annotations converted to JSON (with gt_valid.mat) "
    "from the reference implementation's repository, leoxiaobin/deep-high-resolution-net.pytorch "
    "(links to OneDrive and GoogleDrive in its README, section 'Data preparation'). "
    "To try everything without MPII, use a generated MPII-format set: --dataset synthetic "
    "(scripts/make_synthetic_mpii.py)."
)


def annotation_path(root: str, image_set: str) -> str:
    return os.path.join(root, "annot", f"{image_set}.json")


def gt_valid_path(root: str) -> str:
    return os.path.join(root, "annot", "gt_valid.mat")


def mpii_gt_path(cfg: Any) -> str:
    """``ROOT/annot/gt_valid.mat`` for ``cfg.dataset.root`` (what ``mpii_evaluate`` reads)."""
    return gt_valid_path(cfg.dataset.root)


def convert_record(
    raw: Mapping[str, Any], *, root: str, image_set: str, where: str = "record",
    num_joints: int = MPII_NUM_JOINTS,
) -> dict[str, Any]:
    """One JSON record -> the reference's database entry.

    When ``center[0] != -1`` the centre moves down by ``15 * scale`` px and the
    scale grows by 1.25 (a looser box that keeps limbs in); then the centre and
    the joints become 0-based (minus 1). The test split carries no joints: its
    joints and visibilities are zeros, as in the reference.

    Args:
      raw: the JSON record.
      root: dataset root; the image path is ``root/images/<image>``.
      image_set: ``'train'``, ``'valid'``, ``'test'``, ...
      where: how to name the record in errors (file and position).
      num_joints: joints expected per record.

    Returns:
      dict with ``image`` (path), ``center`` (2,) float64, ``scale`` (2,) float64
      as (s, s), ``joints_3d`` (J, 3) float64 0-based, ``joints_3d_vis`` (J, 3)
      float64 with the visibility in columns 0 and 1, ``filename`` '' and ``imgnum`` 0.
    """
    for key in ("image", "center", "scale"):
        if key not in raw:
            raise ValueError(f"{where}: missing key {key!r}; a record needs image, center, scale, "
                             "joints, joints_vis")
    center = np.array(raw["center"], dtype=np.float64)
    if center.shape != (2,):
        raise ValueError(f"{where}: center must be (x, y), got shape {center.shape}")
    s = float(raw["scale"])
    scale = np.array([s, s], dtype=np.float64)
    if center[0] != -1:
        center[1] = center[1] + 15 * scale[1]
        scale = scale * 1.25
    center = center - 1

    joints_3d = np.zeros((num_joints, 3), dtype=np.float64)
    joints_3d_vis = np.zeros((num_joints, 3), dtype=np.float64)
    if image_set != "test":
        for key in ("joints", "joints_vis"):
            if key not in raw:
                raise ValueError(f"{where} (image {raw['image']!r}): missing key {key!r}")
        joints = np.array(raw["joints"], dtype=np.float64)
        vis = np.array(raw["joints_vis"], dtype=np.float64)
        if joints.ndim != 2 or joints.shape[0] != num_joints or joints.shape[1] < 2:
            raise ValueError(f"{where} (image {raw['image']!r}): joints has shape {joints.shape}, "
                             f"expected ({num_joints}, 2)")
        if vis.shape != (num_joints,):
            raise ValueError(f"{where} (image {raw['image']!r}): joints_vis has shape {vis.shape}, "
                             f"expected ({num_joints},)")
        joints_3d[:, 0:2] = joints[:, 0:2] - 1
        joints_3d_vis[:, 0] = vis
        joints_3d_vis[:, 1] = vis
    return {
        "image": os.path.join(root, "images", str(raw["image"])),
        "center": center,
        "scale": scale,
        "joints_3d": joints_3d,
        "joints_3d_vis": joints_3d_vis,
        "filename": "",
        "imgnum": 0,
    }


def load_records(root: str, image_set: str, num_joints: int = MPII_NUM_JOINTS) -> list[dict[str, Any]]:
    """Reads and converts ``root/annot/<image_set>.json`` (errors name the path and the layout)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MPII root {root!r} does not exist.\n{MPII_HELP}")
    path = annotation_path(root, image_set)
    raw = read_json(path, "MPII annotation file", f".\n{MPII_HELP}")
    if not isinstance(raw, list):
        raise ValueError(f"MPII annotation file {path!r}: expected a list of records, "
                         f"got {type(raw).__name__}")
    return [convert_record(r, root=root, image_set=image_set, where=f"{path} record {i}",
                           num_joints=num_joints)
            for i, r in enumerate(raw)]


class MPIIDataset(JointsDataset):
    """MPII Human Pose: the records of ``ROOT/annot/<image_set>.json``, scored by PCKh.

    See :class:`~hrnet_jax.data.base.JointsDataset` for the samples and the
    arguments. The evaluation is the reference's PCKh table against
    ``ROOT/annot/gt_valid.mat`` (:func:`hrnet_jax.metrics.mpii_evaluate`), and
    the best model is the one with the highest ``Mean``.
    """

    keypoints = MPII_KEYPOINTS
    headline_metric = "Mean"
    help = MPII_HELP
    default_root = "data/mpii"

    def load_records(self) -> list[dict[str, Any]]:
        return load_records(self.root, self.image_set, self.spec.num_joints)

    def describe(self) -> str:
        return annotation_path(self.root, self.image_set)

    def evaluate(self, preds: np.ndarray, output_dir: str | None = None
                 ) -> collections.OrderedDict[str, Any] | None:
        """The PCKh table of ``preds`` (N, 16, 2 or 3); with ``output_dir``, also
        ``pred.mat`` there: (N, 16, 2) 1-based (MATLAB) pixels, as the reference
        writes it for MPII's evaluation toolkit. None for a split without
        ground truth (a split named like ``test``, as in the reference)."""
        from hrnet_jax.metrics import mpii_evaluate

        if output_dir is not None:
            import scipy.io

            os.makedirs(output_dir, exist_ok=True)
            scipy.io.savemat(os.path.join(output_dir, "pred.mat"),
                             {"preds": np.asarray(preds)[..., :2].astype(np.float64) + 1.0})
        if "test" in self.image_set:
            return None
        return mpii_evaluate(np.asarray(preds), gt_valid_path(self.root))
