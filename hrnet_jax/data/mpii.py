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

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from hrnet_jax.constants import MPII_NUM_JOINTS
from hrnet_jax.data.sample import AugmentParams, SampleSpec, make_sample

logger = logging.getLogger(__name__)

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


class BadImageError(ValueError):
    """An image file that is missing, unreadable or not a decodable picture."""


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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MPII annotation file {path!r} does not exist.\n{MPII_HELP}")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"MPII annotation file {path!r} is not valid JSON: {e}") from None
    if not isinstance(raw, list):
        raise ValueError(f"MPII annotation file {path!r}: expected a list of records, "
                         f"got {type(raw).__name__}")
    return [convert_record(r, root=root, image_set=image_set, where=f"{path} record {i}",
                           num_joints=num_joints)
            for i, r in enumerate(raw)]


def read_image(path: str) -> np.ndarray:
    """The image as the reference reads it, in BGR order: (H, W, 3) uint8.

    Raises BadImageError naming the file when it is missing or cannot be decoded
    (OpenCV itself returns None silently).
    """
    if not os.path.isfile(path):
        raise BadImageError(f"image file {path!r} does not exist")
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.size == 0:
        raise BadImageError(f"image file {path!r} could not be read: it is empty, truncated or "
                            "not an image")
    return image


class MPIIDataset:
    """MPII records and the reference's per-sample transform.

    ``ds[i]`` is ``(input (3, H, W) float32, target (J, h, w) float32,
    target_weight (J, 1) float32, meta dict)``; in train mode the augmentation
    draws from a generator seeded by ``(seed, epoch, i)`` (``ds.load(i, epoch)``),
    so a sample is a pure function of its seed, epoch and index.

    Args:
      root: dataset root in the MPII layout.
      image_set: annotation file name without ``.json``.
      is_train: augment (scale, rotation, flip, half body) as the reference.
      cfg: a :class:`hrnet_jax.config.Config` (model sizes, sigma, dataset factors, seed).
      skip_bad_images: instead of raising on an unreadable image, warn and hand
        back a sample with ``meta['valid'] = False`` (see :meth:`load`).
    """

    def __init__(self, root: str, image_set: str, is_train: bool, cfg: Any, *,
                 skip_bad_images: bool = False) -> None:
        self.root = root
        self.image_set = image_set
        self.is_train = bool(is_train)
        self.seed = int(cfg.seed)
        self.skip_bad_images = bool(skip_bad_images)
        self.spec = SampleSpec.from_config(cfg)
        self.augment = AugmentParams.from_config(cfg) if self.is_train else None
        self.db = load_records(root, image_set, self.spec.num_joints)

    def __len__(self) -> int:
        return len(self.db)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        return self.load(index, epoch=0)

    def rng(self, index: int, epoch: int) -> np.random.Generator:
        """The augmentation generator of one sample: PCG64 seeded by (seed, epoch, index)."""
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [self.seed, int(epoch), int(index)])))

    def load(self, index: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """Sample ``index`` as seen in ``epoch``; ``meta`` also has ``index`` and ``valid``.

        With ``skip_bad_images``, an unreadable image gives an all-zero input,
        target and weight with ``meta['valid'] = False`` and a logged warning,
        so a loader can leave it out and count it; otherwise BadImageError.
        """
        if not 0 <= index < len(self.db):
            raise IndexError(f"index {index} out of range for {len(self.db)} records of "
                             f"{annotation_path(self.root, self.image_set)}")
        record = self.db[index]
        try:
            image = read_image(record["image"])
        except BadImageError as e:
            if not self.skip_bad_images:
                raise
            logger.warning("skipping record %d: %s", index, e)
            return self._blank(record, index)
        rng = self.rng(index, epoch) if self.is_train else None
        input_, target, target_weight, meta = make_sample(image, record, self.spec, self.augment, rng)
        meta["index"] = int(index)
        meta["valid"] = True
        return input_, target, target_weight, meta

    def _blank(self, record: Mapping[str, Any], index: int):
        w, h = self.spec.image_size
        hw, hh = self.spec.heatmap_size
        j = self.spec.num_joints
        meta = {
            "image": record["image"], "filename": record["filename"], "imgnum": record["imgnum"],
            "joints": np.array(record["joints_3d"]), "joints_vis": np.array(record["joints_3d_vis"]),
            "center": np.array(record["center"]), "scale": np.array(record["scale"]),
            "rotation": 0.0, "score": 1.0, "index": int(index), "valid": False,
        }
        return (np.zeros((3, h, w), np.float32), np.zeros((j, hh, hw), np.float32),
                np.zeros((j, 1), np.float32), meta)

