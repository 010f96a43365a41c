"""Constants shared by every module: pixel statistics and the reference's box unit.

A dataset's own facts (joint names, flip pairs, body halves, skeleton) live
with the dataset: :data:`hrnet_jax.data.mpii.MPII_KEYPOINTS`,
:data:`hrnet_jax.data.coco.COCO_KEYPOINTS`.
"""

from __future__ import annotations

# ImageNet statistics the inputs are normalised with, in RGB order.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# The reference expresses a person's box size in units of this many pixels.
PIXEL_STD = 200.0
