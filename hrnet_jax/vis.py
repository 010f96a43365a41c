"""Debug pictures of batches, as the reference's ``save_debug_images``.

* :func:`joints_grid`: the batch's input images in a grid (``nrow`` per row,
  ``padding`` px apart) with joints drawn: ground truth as filled red dots,
  predictions as green rings.
* :func:`heatmaps_grid`: one row per sample: the image resized to heatmap size,
  then each joint's heatmap in the JET colour map blended over it (0.7 map,
  0.3 image) with the heatmap's maximum marked.

Inputs are the network's normalised ``(B, 3, H, W)`` batch (denormalised here
with the ImageNet statistics); pictures are RGB ``uint8`` arrays, written as
JPG or PNG by the ``save_*`` functions.
"""

from __future__ import annotations

import math
import os
from typing import Any

import cv2
import numpy as np

from hrnet_jax.constants import IMAGENET_MEAN, IMAGENET_STD

ArrayLike = Any
GT_COLOR = (255, 0, 0)
PRED_COLOR = (0, 255, 0)


def denormalize(images: ArrayLike) -> np.ndarray:
    """(B, 3, H, W) normalised RGB -> (B, H, W, 3) uint8 RGB."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected a normalised batch (B, 3, H, W), got {images.shape}")
    mean = np.asarray(IMAGENET_MEAN, np.float32)[None, :, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[None, :, None, None]
    pixels = np.clip((images * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def _visible(joints_vis: ArrayLike | None, shape: tuple[int, int]) -> np.ndarray:
    if joints_vis is None:
        return np.ones(shape, bool)
    vis = np.asarray(joints_vis)
    vis = vis[..., 0] if vis.ndim == 3 else vis
    if vis.shape != shape:
        raise ValueError(f"joints_vis: expected (B, J) or (B, J, k) with (B, J) = {shape}, "
                         f"got {np.shape(joints_vis)}")
    return vis > 0


def joints_grid(images: ArrayLike, joints: ArrayLike | None = None, joints_vis: ArrayLike | None = None,
                pred: ArrayLike | None = None, *, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """A grid of the batch's images with joints drawn.

    Args:
      images: (B, 3, H, W) normalised inputs.
      joints: (B, J, 2+) ground-truth joints in input pixels, or None.
      joints_vis: (B, J) or (B, J, k) visibility of ``joints`` (and ``pred``), or None.
      pred: (B, J, 2+) predicted joints in input pixels, or None.
      nrow: images per grid row. padding: pixels between images.

    Returns:
      (rows * (H + padding) + padding, cols * (W + padding) + padding, 3) uint8 RGB.
    """
    pixels = denormalize(images)
    b, h, w = pixels.shape[:3]
    cols = min(nrow, b)
    rows = int(math.ceil(b / cols))
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, 3), np.uint8)
    layers = []
    for points, color, filled in ((joints, GT_COLOR, True), (pred, PRED_COLOR, False)):
        if points is None:
            continue
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 3 or points.shape[0] != b or points.shape[2] < 2:
            raise ValueError(f"joints: expected (B, J, 2) with B = {b}, got {points.shape}")
        layers.append((points, _visible(joints_vis, points.shape[:2]), color, filled))
    for k in range(b):
        y0 = (k // cols) * (h + padding) + padding
        x0 = (k % cols) * (w + padding) + padding
        tile = pixels[k].copy()
        for points, vis, color, filled in layers:
            for (x, y), v in zip(points[k, :, :2], vis[k], strict=True):
                if v and np.isfinite(x) and np.isfinite(y):
                    cv2.circle(tile, (int(x), int(y)), 2, color, -1 if filled else 1, cv2.LINE_AA)
        grid[y0:y0 + h, x0:x0 + w] = tile
    return grid


def heatmaps_grid(images: ArrayLike, heatmaps: ArrayLike) -> np.ndarray:
    """Per sample, a row: the resized image, then each joint's heatmap over it in JET.

    Args:
      images: (B, 3, H, W) normalised inputs.
      heatmaps: (B, J, h, w) heatmaps, values in [0, 1] shown at full range.

    Returns:
      (B * h, (J + 1) * w, 3) uint8 RGB.
    """
    pixels = denormalize(images)
    maps = np.asarray(heatmaps, dtype=np.float32)
    if maps.ndim != 4 or maps.shape[0] != pixels.shape[0]:
        raise ValueError(f"heatmaps: expected (B, J, h, w) with B = {pixels.shape[0]}, got {maps.shape}")
    b, j, h, w = maps.shape
    grid = np.zeros((b * h, (j + 1) * w, 3), np.uint8)
    flat = maps.reshape(b, j, -1)
    peaks = np.argmax(flat, axis=-1)
    for i in range(b):
        small = cv2.resize(pixels[i], (w, h), interpolation=cv2.INTER_LINEAR)
        grid[i * h:(i + 1) * h, 0:w] = small
        as_bytes = np.clip(maps[i] * 255.0, 0, 255).astype(np.uint8)
        for k in range(j):
            # applyColorMap writes BGR; flip to RGB to match the image.
            colored = cv2.applyColorMap(as_bytes[k], cv2.COLORMAP_JET)[:, :, ::-1]
            blend = (colored * 0.7 + small * 0.3).astype(np.uint8)
            px, py = int(peaks[i, k] % w), int(peaks[i, k] // w)
            if flat[i, k, peaks[i, k]] > 0:
                cv2.circle(blend, (px, py), 1, (255, 0, 0), 1)
            grid[i * h:(i + 1) * h, (k + 1) * w:(k + 2) * w] = blend
    return grid


def save_image(path: str, picture_rgb: np.ndarray) -> str:
    """Writes an RGB uint8 picture as JPG or PNG (by the extension); returns ``path``."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if not path.lower().endswith((".jpg", ".jpeg", ".png")):
        raise ValueError(f"{path!r}: expected a .jpg, .jpeg or .png file name")
    if not cv2.imwrite(path, np.ascontiguousarray(picture_rgb[:, :, ::-1])):
        raise OSError(f"could not write {path!r}")
    return path


def save_debug_images(prefix: str, input_: ArrayLike, meta: dict, target: ArrayLike | None = None,
                      joints_pred: ArrayLike | None = None, output: ArrayLike | None = None,
                      ext: str = "jpg") -> list[str]:
    """The reference's four debug pictures: ``{prefix}_gt``, ``_pred``, ``_hm_gt``, ``_hm_pred``.

    Args:
      prefix: path prefix of the files.
      input_: (B, 3, H, W) normalised inputs.
      meta: the batch's meta; ``joints`` (B, J, 3) and ``joints_vis`` in input pixels.
      target: (B, J, h, w) target heatmaps, or None.
      joints_pred: (B, J, 2+) predictions in input pixels, or None.
      output: (B, J, h, w) predicted heatmaps, or None.
      ext: ``'jpg'`` or ``'png'``.

    Returns:
      The paths written.
    """
    written = [save_image(f"{prefix}_gt.{ext}",
                          joints_grid(input_, meta["joints"], meta["joints_vis"]))]
    if joints_pred is not None:
        written.append(save_image(f"{prefix}_pred.{ext}",
                                  joints_grid(input_, meta["joints"], meta["joints_vis"], joints_pred)))
    if target is not None:
        written.append(save_image(f"{prefix}_hm_gt.{ext}", heatmaps_grid(input_, target)))
    if output is not None:
        written.append(save_image(f"{prefix}_hm_pred.{ext}", heatmaps_grid(input_, output)))
    return written
