"""The reference's per-sample transform: augmentation, crop, normalisation, targets.

Pure NumPy and OpenCV (no JAX), so data-loading workers stay light. The order
of operations is the reference's:

1. train only: half body (if more than ``num_joints_half_body`` joints are
   visible and ``u < prob_half_body``), scale ``s * clip(1 + 0.25 n, 0.75, 1.25)``
   (factor from the config), rotation ``clip(30 n, -60, 60)`` when ``u <= 0.6``
   else 0, and when flipping is on a horizontal flip when ``u <= 0.5``;
2. the person crop of :func:`hrnet_jax.crop.warp_crop`: ``cv2.warpAffine``
   (bilinear, black border) of the uint8 image into ``image_size`` with
   ``get_affine_transform(center, scale, rotation, image_size)``; joints with
   ``vis > 0`` go through the same matrix;
3. :func:`hrnet_jax.crop.normalize_image`: ``x / 255``, then ``(x - mean) / std``
   with the ImageNet statistics, in float32;
4. Gaussian targets from :func:`hrnet_jax.targets.generate_target_np`.

Here ``u`` is uniform on [0, 1) and ``n`` standard normal, drawn in that order
from the sample's own generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from hrnet_jax.constants import PIXEL_STD
from hrnet_jax.crop import normalize_image, warp
from hrnet_jax.targets import generate_target_np
from hrnet_jax.transforms import affine_transform, get_affine_transform


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """Sizes of one sample (network input and heatmaps are (width, height)) and the
    joint pairs that swap when a sample is mirrored."""

    image_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float
    num_joints: int
    color_rgb: bool = True
    target_type: str = "gaussian"
    flip_pairs: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_config(cls, cfg: Any, flip_pairs: Sequence[tuple[int, int]] = ()) -> SampleSpec:
        return cls(tuple(int(v) for v in cfg.model.image_size),
                   tuple(int(v) for v in cfg.model.heatmap_size),
                   float(cfg.model.sigma), int(cfg.model.num_joints),
                   bool(cfg.dataset.color_rgb), str(cfg.model.target_type),
                   tuple((int(a), int(b)) for a, b in flip_pairs))


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """The train-time augmentation factors (``cfg.dataset``)."""

    scale_factor: float = 0.25
    rot_factor: float = 30.0
    flip: bool = True
    prob_half_body: float = -1.0
    num_joints_half_body: int = 8
    upper_body_ids: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, cfg: Any, upper_body_ids: Sequence[int]) -> AugmentParams:
        d = cfg.dataset
        return cls(float(d.scale_factor), float(d.rot_factor), bool(d.flip),
                   float(d.prob_half_body), int(d.num_joints_half_body),
                   tuple(int(i) for i in upper_body_ids))


def half_body_box(joints: np.ndarray, joints_vis: np.ndarray, upper_body_ids: Sequence[int],
                  aspect_ratio: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """A box around the upper or lower body's visible joints, or None.

    The upper body is taken when ``n < 0.5`` for a standard normal ``n`` (a
    reference quirk: probability 0.69, not 0.5) and it has more than 2 visible
    joints, else the lower body if it has more than 2, else the upper body.
    The box is fitted to ``aspect_ratio`` (width / height) and enlarged 1.5x.

    Args:
      joints: (J, 3) joints in image pixels.
      joints_vis: (J, 3) visibility (column 0 used).
      upper_body_ids: joint ids of the upper body.
      aspect_ratio: input width / height.
      rng: the sample's generator (one normal draw).

    Returns:
      ``(center (2,), scale (2,))`` float32, or None when fewer than 2 joints qualify.
    """
    visible = joints_vis[:, 0] > 0
    upper_mask = np.zeros(len(joints), bool)
    upper_mask[list(upper_body_ids)] = True
    upper = joints[visible & upper_mask]
    lower = joints[visible & ~upper_mask]
    if rng.standard_normal() < 0.5 and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
        return None
    chosen = chosen.astype(np.float32)
    center = chosen.mean(axis=0)[:2]
    left_top, right_bottom = chosen.min(axis=0), chosen.max(axis=0)
    w = right_bottom[0] - left_top[0]
    h = right_bottom[1] - left_top[1]
    if w > aspect_ratio * h:
        h = w * 1.0 / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w * 1.0 / PIXEL_STD, h * 1.0 / PIXEL_STD], dtype=np.float32) * 1.5
    return center, scale


def fliplr_joints(joints: np.ndarray, joints_vis: np.ndarray, width: int,
                  flip_pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Mirrors joints in an image ``width`` pixels wide: x -> width - 1 - x.

    Paired joints (left/right) swap rows, then joints are multiplied by their
    visibility, as the reference (so invisible joints become zeros).

    Args:
      joints: (J, 3) joints. joints_vis: (J, 3). width: image width in pixels.

    Returns:
      New ``(joints, joints_vis)``, both (J, 3).
    """
    joints = np.array(joints, dtype=np.float64)
    joints_vis = np.array(joints_vis, dtype=np.float64)
    joints[:, 0] = width - joints[:, 0] - 1
    order = np.arange(len(joints))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    return joints[order] * joints_vis[order], joints_vis[order]


def draw_augmentation(rng: np.random.Generator, joints: np.ndarray, joints_vis: np.ndarray,
                      center: np.ndarray, scale: np.ndarray, aug: AugmentParams,
                      aspect_ratio: float) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Draws the train-time centre, scale, rotation (degrees) and flip flag.

    Args:
      rng: the sample's generator. joints, joints_vis: (J, 3). center, scale: (2,).
      aug: augmentation factors. aspect_ratio: input width / height.

    Returns:
      ``(center (2,), scale (2,), rotation, flip)``.
    """
    if np.sum(joints_vis[:, 0]) > aug.num_joints_half_body and rng.random() < aug.prob_half_body:
        box = half_body_box(joints, joints_vis, aug.upper_body_ids, aspect_ratio, rng)
        if box is not None:
            center, scale = box
    sf, rf = aug.scale_factor, aug.rot_factor
    scale = scale * np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf)
    rotation = float(np.clip(rng.standard_normal() * rf, -rf * 2, rf * 2)) if rng.random() <= 0.6 else 0.0
    flip = bool(aug.flip and rng.random() <= 0.5)
    return center, scale, rotation, flip


def make_sample(image_bgr: np.ndarray, record: Mapping[str, Any], spec: SampleSpec,
                aug: AugmentParams | None, rng: np.random.Generator | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """One training or evaluation sample from a decoded image and its record.

    Args:
      image_bgr: (H, W, 3) uint8 as ``cv2.imread`` returns it.
      record: a converted record (``center``, ``scale``, ``joints_3d``, ``joints_3d_vis``, ...).
      spec: sizes. aug: augmentation factors, or None for evaluation (no randomness).
      rng: the sample's generator when ``aug`` is given.

    Returns:
      ``input`` (3, H, W) float32, ``target`` (J, h, w) float32, ``target_weight``
      (J, 1) float32 and ``meta`` (image, filename, imgnum, joints (J, 3) in input
      pixels, joints_vis (J, 3), center (2,), scale (2,), rotation, score).
    """
    joints = np.array(record["joints_3d"], dtype=np.float64)
    joints_vis = np.array(record["joints_3d_vis"], dtype=np.float64)
    if joints.shape != (spec.num_joints, 3) or joints_vis.shape != (spec.num_joints, 3):
        raise ValueError(f"record for {record['image']!r}: joints {joints.shape} and joints_vis "
                         f"{joints_vis.shape}, expected ({spec.num_joints}, 3)")
    center = np.array(record["center"], dtype=np.float64)
    scale = np.array(record["scale"], dtype=np.float64)
    rotation = 0.0
    if aug is not None:
        if rng is None:
            raise ValueError("make_sample: augmentation needs the sample's generator (rng)")
        aspect = spec.image_size[0] / spec.image_size[1]
        center, scale, rotation, flip = draw_augmentation(
            rng, joints, joints_vis, center, scale, aug, aspect)
        if flip:
            width = image_bgr.shape[1]
            image_bgr = cv2.flip(image_bgr, 1)  # the same pixels as [:, ::-1], ten times faster
            joints, joints_vis = fliplr_joints(joints, joints_vis, width, spec.flip_pairs)
            center = np.array(center, copy=True)
            center[0] = width - center[0] - 1

    # Bilinear warping treats channels alike, so cropping the BGR image and
    # reordering the small crop equals the reference's convert-then-crop.
    trans = get_affine_transform(center, scale, rotation, spec.image_size)
    crop = warp(image_bgr, trans, spec.image_size)
    if spec.color_rgb:
        crop = crop[:, :, ::-1]
    input_ = normalize_image(crop)

    # The matrix the crop was made with moves the joints along.
    visible = joints_vis[:, 0] > 0.0
    joints[visible, 0:2] = affine_transform(joints[visible, 0:2], trans)
    target, target_weight = generate_target_np(
        joints, joints_vis, image_size=spec.image_size, heatmap_size=spec.heatmap_size,
        sigma=spec.sigma, target_type=spec.target_type)
    meta = {
        "image": record["image"],
        "filename": record.get("filename", ""),
        "imgnum": record.get("imgnum", 0),
        "joints": joints,
        "joints_vis": joints_vis,
        "center": np.asarray(center, dtype=np.float64),
        "scale": np.asarray(scale, dtype=np.float64),
        "rotation": float(rotation),
        "score": float(record.get("score", 1.0)),
    }
    return input_, target.astype(np.float32), target_weight.astype(np.float32), meta
