"""Person crops: boxes to centre and scale, the warp into the network's input, normalisation.

One path for training, evaluation and inference: the data pipeline
(:func:`hrnet_jax.data.sample.make_sample`) and
:class:`hrnet_jax.inference.PoseEstimator` both crop with :func:`warp_crop`
(``cv2.warpAffine``, bilinear, black border, with
``get_affine_transform(center, scale, rotation, image_size)``) and normalise
with :func:`normalize_image` (``(x / 255 - mean) / std`` with the ImageNet
statistics, in float32). Boxes become centre and scale as the reference's
do for detected people (:func:`box_to_center_scale`). NumPy and OpenCV only
(no JAX), so data-loading workers stay light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from hrnet_jax.constants import IMAGENET_MEAN, IMAGENET_STD, PIXEL_STD
from hrnet_jax.transforms import get_affine_transform

__all__ = ["BOX_PADDING", "box_to_center_scale", "check_boxes", "crop_inputs",
           "normalize_image", "warp", "warp_crop"]

# The reference pads every detected box by this factor before cropping.
BOX_PADDING = 1.25

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def box_to_center_scale(
    boxes: Any, image_size: Sequence[int], padding: float = BOX_PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """Crop centre and scale of person boxes, fitted to the model's aspect ratio.

    The shorter side of each box is lengthened until width / height equals
    that of ``image_size``, then both sides are multiplied by ``padding``.

    Args:
      boxes: (P, 4) boxes (x, y, w, h) in image pixels.
      image_size: model input (width, height).
      padding: enlargement of the fitted box (the reference's 1.25).

    Returns:
      ``(center, scale)``: (P, 2) float32 box centres (x, y) in pixels and
      (P, 2) float32 sizes in units of 200 px.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (P, 4) as (x, y, w, h), got {boxes.shape}")
    x, y, w, h = boxes.T
    aspect = float(image_size[0]) / float(image_size[1])
    center = np.stack([x + w * 0.5, y + h * 0.5], axis=-1)
    fit_w = np.where(w < aspect * h, h * aspect, w)
    fit_h = np.where(w > aspect * h, w / aspect, h)
    # The reference rounds the box size to float32 before padding it, and pads
    # in float32: the last bit of the scale follows from that order.
    scale = (np.stack([fit_w, fit_h], axis=-1) / PIXEL_STD).astype(np.float32)
    scale = scale * np.float32(padding)
    return center.astype(np.float32), scale


def check_boxes(boxes: Any, image_shape: Sequence[int]) -> np.ndarray:
    """Validates person boxes against an image.

    Args:
      boxes: (P, 4) or (4,) boxes (x, y, w, h) in pixels.
      image_shape: (H, W, ...) of the image.

    Returns:
      (P, 4) float64 boxes.

    Raises:
      ValueError: naming the first box that is malformed, empty (width or
        height <= 0) or entirely outside the image.
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (P, 4) or (4,) as (x, y, w, h), "
                         f"got {np.shape(boxes)}")
    height, width = image_shape[0], image_shape[1]
    for i, (x, y, w, h) in enumerate(array):
        box = f"box {i} (x, y, w, h) = ({x:g}, {y:g}, {w:g}, {h:g})"
        if not np.all(np.isfinite([x, y, w, h])):
            raise ValueError(f"{box} is not finite")
        if w <= 0 or h <= 0:
            raise ValueError(f"{box} is empty: width and height must be positive")
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise ValueError(f"{box} lies entirely outside the {width}x{height} image")
    return array


def warp_crop(image: np.ndarray, center: Any, scale: Any, rotation: float,
              image_size: Sequence[int]) -> np.ndarray:
    """The person box of ``image`` warped into the network's input window.

    Bilinear, black outside the image. The matrix is
    ``get_affine_transform(center, scale, rotation, image_size)``, built in
    the precision of ``center`` and ``scale`` as given (float32 boxes, as
    detectors and :func:`box_to_center_scale` give them, are kept float32
    where the reference keeps them so).

    Args:
      image: (H, W, C) uint8 image, in any channel order (bilinear warping
        treats channels alike).
      center: (2,) box centre (x, y) in pixels.
      scale: (2,) box size in units of 200 px.
      rotation: degrees.
      image_size: output (width, height).

    Returns:
      (height, width, C) uint8 crop.
    """
    size = (int(image_size[0]), int(image_size[1]))
    return warp(image, get_affine_transform(center, scale, rotation, size), size)


def warp(image: np.ndarray, trans: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """``image`` through the (2, 3) crop matrix ``trans`` into ``image_size`` (width,
    height): bilinear, black outside the image (:func:`warp_crop` with its matrix given,
    for callers that also move points with it)."""
    width, height = int(image_size[0]), int(image_size[1])
    return cv2.warpAffine(np.ascontiguousarray(image), trans, (width, height),
                          flags=cv2.INTER_LINEAR)


def _normalisation_table() -> np.ndarray:
    """(3, 256) float32: every byte value of each channel, normalised once."""
    x = np.arange(256, dtype=np.float32)[:, None] / np.float32(255)
    return np.ascontiguousarray(((x - _MEAN) / _STD).T)


# A byte has 256 values, so the float32 arithmetic is done once per value and
# channel; looking the results up gives the same bits three times faster.
_NORMALISED = _normalisation_table()


def normalize_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32: ``(x / 255 - mean) / std``, in float32 as torchvision."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"normalize_image: expected an (H, W, 3) uint8 image, got shape "
                         f"{image.shape} dtype {image.dtype}")
    channels = np.ascontiguousarray(image.transpose(2, 0, 1))
    out = np.empty(channels.shape, np.float32)
    for c in range(3):
        np.take(_NORMALISED[c], channels[c], out=out[c])
    return out


def crop_inputs(image: np.ndarray, center: Any, scale: Any,
                image_size: Sequence[int]) -> np.ndarray:
    """The network inputs of people in an image: each box warped, then normalised.

    Args:
      image: (H, W, 3) uint8 image in the channel order the model was trained on.
      center: (P, 2) crop centres.
      scale: (P, 2) crop sizes in units of 200 px.
      image_size: model input (width, height).

    Returns:
      (P, 3, height, width) float32 inputs normalised with the ImageNet statistics.
    """
    width, height = int(image_size[0]), int(image_size[1])
    crops = [normalize_image(warp_crop(image, c, s, 0.0, (width, height)))
             for c, s in zip(center, scale, strict=True)]
    if not crops:
        return np.zeros((0, 3, height, width), np.float32)
    return np.stack(crops)
