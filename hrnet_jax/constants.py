"""Dataset facts shared by every module: joint names, flip pairs, skeletons, pixel statistics.

This is the one place these live; everything else imports them.
"""

from __future__ import annotations

MPII_NUM_JOINTS = 16
MPII_JOINT_NAMES: tuple[str, ...] = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder",
    "l_elbow", "l_wrist",
)
# Joints that swap places when the image is mirrored.
MPII_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
# Joints the half-body augmentation calls the upper body.
MPII_UPPER_BODY_IDS: tuple[int, ...] = (7, 8, 9, 10, 11, 12, 13, 14, 15)
# Limbs for drawing: (joint a, joint b).
MPII_SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
    (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15),
)

COCO_NUM_JOINTS = 17
COCO_JOINT_NAMES: tuple[str, ...] = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
    "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)

# ImageNet statistics the inputs are normalised with, in RGB order.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# The reference expresses a person's box size in units of this many pixels.
PIXEL_STD = 200.0


def flip_pairs_for(num_joints: int) -> tuple[tuple[int, int], ...]:
    """Flip pairs for a model with ``num_joints`` outputs (16: MPII, 17: COCO)."""
    if num_joints == MPII_NUM_JOINTS:
        return MPII_FLIP_PAIRS
    if num_joints == COCO_NUM_JOINTS:
        return COCO_FLIP_PAIRS
    raise ValueError(f"no flip pairs are known for {num_joints} joints (expected 16 or 17)")
