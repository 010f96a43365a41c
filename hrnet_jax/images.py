"""Reading images: one reader for the data pipeline and for inference.

:func:`read_image` takes a file path or an (H, W, 3) uint8 array and gives
an (H, W, 3) uint8 array in the colour order asked for: RGB for users; BGR,
as OpenCV decodes it, for the data pipeline, which crops the BGR image and
reorders the small crop (see :func:`hrnet_jax.data.sample.make_sample`).
NumPy and OpenCV only, so data-loading workers stay light.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

__all__ = ["COLOUR_ORDERS", "BadImageError", "read_image"]

COLOUR_ORDERS = ("RGB", "BGR")


class BadImageError(ValueError):
    """An image file that is missing, unreadable or not a decodable picture."""


def read_image(image: Any, colour_order: str = "RGB", *,
               exif_orientation: bool = True) -> np.ndarray:
    """An (H, W, 3) uint8 image from a file path or an array.

    Args:
      image: a path (``str`` or ``os.PathLike``), or an (H, W, 3) uint8 array,
        taken to be in ``colour_order`` already and returned as it is.
      colour_order: ``"RGB"`` or ``"BGR"``, the channel order of a decoded file.
      exif_orientation: turn a file's pixels as its EXIF orientation says, as
        image viewers show it. The data pipeline reads the pixels as stored,
        as the reference does: its annotations are in that frame.

    Returns:
      (H, W, 3) uint8 image.

    Raises:
      BadImageError: the file does not exist or cannot be decoded (empty,
        truncated or not an image); the message names it.
      ValueError: ``colour_order`` is neither of :data:`COLOUR_ORDERS`, or the
        array is not a non-empty (H, W, 3) uint8 array.
    """
    if colour_order not in COLOUR_ORDERS:
        raise ValueError(f"colour_order: expected one of {COLOUR_ORDERS}, got {colour_order!r}")
    if isinstance(image, (str, os.PathLike)):
        return _read_file(os.fspath(image), colour_order, exif_orientation)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image: expected an (H, W, 3) uint8 {colour_order} array, got shape "
                         f"{array.shape} dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image: expected a non-empty (H, W, 3) array, got shape {array.shape}")
    return array


def _read_file(path: str, colour_order: str, exif_orientation: bool) -> np.ndarray:
    if not os.path.isfile(path):
        raise BadImageError(f"image file {path!r} does not exist")
    flags = cv2.IMREAD_COLOR if exif_orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    # OpenCV returns None, silently, for a file it cannot decode.
    bgr = cv2.imread(path, flags)
    if bgr is None or bgr.size == 0:
        raise BadImageError(f"image file {path!r} could not be read: it is empty, truncated or "
                            "not an image")
    return bgr if colour_order == "BGR" else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
