"""What a dataset says about its joints: names, mirror pairs, body halves, limbs.

A :class:`Keypoints` is plain data owned by one dataset class (MPII's in
:mod:`hrnet_jax.data.mpii`, COCO's in :mod:`hrnet_jax.data.coco`); training,
evaluation, inference and drawing read it from the dataset chosen by name
(:func:`hrnet_jax.data.registry.dataset_class`), never from a joint count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

# RGB: the person's left orange, right blue, the midline green.
SIDE_COLOURS: dict[str, tuple[int, int, int]] = {
    "left": (255, 128, 0), "right": (0, 128, 255), "centre": (0, 200, 0)}


def _side(name: str) -> str:
    low = name.lower()
    if low.startswith(("l_", "left_", "left ")):
        return "left"
    if low.startswith(("r_", "right_", "right ")):
        return "right"
    return "centre"


@dataclasses.dataclass(frozen=True)
class Keypoints:
    """The joints of a dataset.

    Attributes:
      joint_names: (J,) names in output-channel order; a ``l_``/``left_`` or
        ``r_``/``right_`` prefix gives the person's side (for drawing).
      flip_pairs: joint index pairs that swap when the image is mirrored.
      upper_body_ids: joints the half-body augmentation calls the upper body
        (the rest are the lower body).
      skeleton: limbs to draw, as joint index pairs.
      sigmas: per-joint OKS falloff (COCO's keypoint sigmas / 10), or None
        where the dataset is not scored by OKS.
    """

    joint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    upper_body_ids: tuple[int, ...]
    skeleton: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        j = len(self.joint_names)
        for what, pairs in (("flip_pairs", self.flip_pairs), ("skeleton", self.skeleton)):
            for pair in pairs:
                if len(pair) != 2 or not all(0 <= int(i) < j for i in pair):
                    raise ValueError(f"Keypoints.{what}: pair {tuple(pair)} is not two joint "
                                     f"indices in [0, {j})")
        bad = [i for i in self.upper_body_ids if not 0 <= int(i) < j]
        if bad:
            raise ValueError(f"Keypoints.upper_body_ids: {bad} are not joint indices in [0, {j})")
        if self.sigmas is not None and len(self.sigmas) != j:
            raise ValueError(f"Keypoints.sigmas: {len(self.sigmas)} values for {j} joints")

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def lower_body_ids(self) -> tuple[int, ...]:
        upper = set(self.upper_body_ids)
        return tuple(i for i in range(self.num_joints) if i not in upper)

    def side(self, joint: int) -> str:
        """``'left'``, ``'right'`` or ``'centre'``: the person's side of ``joint``."""
        return _side(self.joint_names[joint])

    def limb_colour(self, a: int, b: int) -> tuple[int, int, int]:
        """RGB colour of the limb (a, b): its side's, or the midline's when the sides differ."""
        sides = {self.side(a), self.side(b)}
        return SIDE_COLOURS[sides.pop() if len(sides) == 1 else "centre"]

    def joint_colour(self, joint: int) -> tuple[int, int, int]:
        return SIDE_COLOURS[self.side(joint)]


def check_joint_count(keypoints: Keypoints, num_joints: int, dataset: str,
                      where: str = "model.num_joints") -> None:
    """Raises ValueError unless the model's joint count is the dataset's."""
    if int(num_joints) != keypoints.num_joints:
        raise ValueError(f"{where} is {num_joints}, but dataset {dataset!r} has "
                         f"{keypoints.num_joints} joints ({', '.join(keypoints.joint_names)})")


def pairs(values: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    """Joint pairs as a tuple of int 2-tuples."""
    return tuple((int(a), int(b)) for a, b in values)
