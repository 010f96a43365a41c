"""Top-down single-image inference: boxes in, keypoints in image pixels out.

Each person box is fitted to the model's aspect ratio and padded by 1.25 (as
the reference does for detected boxes), cropped and normalised as in
training (:mod:`hrnet_jax.crop`), run through the network with the flip test
by default (:func:`hrnet_jax.forward.predict_heatmaps`) and decoded back to
image pixels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import cv2
import jax
import numpy as np

from hrnet_jax.config import Config
from hrnet_jax.crop import BOX_PADDING, box_to_center_scale, check_boxes, crop_inputs
from hrnet_jax.data.keypoints import SIDE_COLOURS, Keypoints
from hrnet_jax.data.registry import dataset_keypoints
from hrnet_jax.decode import get_final_preds
from hrnet_jax.forward import predict_heatmaps
from hrnet_jax.images import read_image
from hrnet_jax.model_file import load_model
from hrnet_jax.models import build_model
from hrnet_jax.models.variables import check_variables

# The crop functions (hrnet_jax.crop) and read_image (hrnet_jax.images) are
# imported from here too.
__all__ = ["BOX_PADDING", "PoseEstimator", "box_to_center_scale", "check_boxes", "crop_inputs",
           "draw_keypoints", "read_image"]


def _bucket(n: int) -> int:
    # Batches are padded to a power of two so a stream of images with varying
    # person counts compiles a handful of shapes, not one per count.
    return 1 << max(0, (n - 1).bit_length())


class PoseEstimator:
    """Keypoints of the people in an image, from an exported model or variables.

    Example::

      estimator = PoseEstimator("exported/pose_hrnet_w32")
      keypoints = estimator("person.jpg", boxes=[[10, 20, 120, 300]])  # (1, 16, 3)

    Args:
      checkpoint_or_variables: a directory written by
        :func:`hrnet_jax.model_file.save_model`, or ``{'params', 'batch_stats'}``.
      cfg: the configuration; required with variables, and when given with a
        directory it replaces the saved one.
      flip_test: average with the horizontally mirrored input (the reference's
        ``TEST.FLIP_TEST``); ``cfg.test.shift_heatmap`` and ``cfg.test.decode``
        are honoured, and the mirrored joints are paired by the flip pairs of
        ``cfg.dataset.name`` (:attr:`joints`).
      heatmaps_fn: computes the heatmaps instead of the JAX network, e.g. an
        exported model (:func:`hrnet_jax.export.load_onnx`): (N, 3, H, W)
        float32 inputs -> (N, J, H/4, W/4) heatmaps, the flip test already
        fused in when ``flip_test``.
    """

    def __init__(self, checkpoint_or_variables: Any, cfg: Config | None = None, *,
                 flip_test: bool = True,
                 heatmaps_fn: Callable[[np.ndarray], Any] | None = None) -> None:
        if isinstance(checkpoint_or_variables, (str, os.PathLike)):
            variables, saved_cfg = load_model(checkpoint_or_variables)
            cfg = cfg if cfg is not None else saved_cfg
        else:
            variables = checkpoint_or_variables
            if cfg is None:
                raise ValueError("PoseEstimator: cfg is required when variables are given "
                                 "instead of an exported model directory")
        if not isinstance(cfg, Config):
            raise TypeError(f"PoseEstimator: cfg must be a Config, got {type(cfg).__name__}")
        check_variables(variables, cfg)
        self.cfg = cfg
        self.flip_test = bool(flip_test)
        self.image_size = tuple(int(v) for v in cfg.model.image_size)
        self.num_joints = cfg.model.num_joints
        self.joints: Keypoints = dataset_keypoints(cfg)
        self.flip_pairs = self.joints.flip_pairs if self.flip_test else ()
        self.variables = jax.device_put({"params": variables["params"],
                                         "batch_stats": variables["batch_stats"]})
        self._model = build_model(cfg)
        self.decode = cfg.test.decode
        network = jax.jit(functools.partial(
            predict_heatmaps, self._model, flip_test=self.flip_test,
            flip_pairs=tuple(tuple(p) for p in self.flip_pairs),
            shift=bool(cfg.test.shift_heatmap)))
        self._heatmaps = heatmaps_fn or functools.partial(network, self.variables)

    def __call__(self, image: Any, boxes: Any = None) -> np.ndarray:
        """Keypoints of each boxed person.

        Args:
          image: (H, W, 3) uint8 RGB array, or a path to an image file.
          boxes: (P, 4) or (4,) person boxes (x, y, w, h) in pixels; None
            means one person filling the whole image (cropped exactly to the
            image, fitted to the model's aspect ratio, not padded).

        Returns:
          (P, J, 3) float32: x, y in image pixels and the heatmap maximum as score.
        """
        return self.predict_crops(*self.crops(read_image(image), boxes))

    def crops(self, rgb: np.ndarray, boxes: Any = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The network inputs of an (H, W, 3) uint8 RGB image's boxes (as :meth:`__call__`
        takes them): ``(inputs (P, 3, height, width), center (P, 2), scale (P, 2))``."""
        if boxes is None:
            h, w = rgb.shape[:2]
            center, scale = box_to_center_scale([[0, 0, w, h]], self.image_size, padding=1.0)
        else:
            center, scale = box_to_center_scale(check_boxes(boxes, rgb.shape),
                                                self.image_size)
        pixels = rgb if self.cfg.dataset.color_rgb else rgb[..., ::-1]
        inputs = crop_inputs(np.ascontiguousarray(pixels), center, scale, self.image_size)
        return inputs, center, scale

    def predict_crops(self, inputs: Any, center: Any, scale: Any) -> np.ndarray:
        """Keypoints from already cropped and normalised inputs.

        Args:
          inputs: (P, 3, height, width) network inputs.
          center: (P, 2) crop centres used to make them.
          scale: (P, 2) crop sizes in units of 200 px.

        Returns:
          (P, J, 3) float32 x, y (image pixels), score.
        """
        inputs = np.asarray(inputs, np.float32)
        n = inputs.shape[0]
        expected = (3, self.image_size[1], self.image_size[0])
        if inputs.ndim != 4 or inputs.shape[1:] != expected:
            raise ValueError(f"inputs: expected shape (P, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}), got {inputs.shape}")
        if n == 0:
            return np.zeros((0, self.num_joints, 3), np.float32)
        size = _bucket(n)
        pad = size - n
        center = np.asarray(center, np.float32)
        scale = np.asarray(scale, np.float32)
        if pad:
            inputs = np.concatenate([inputs, np.repeat(inputs[:1] * 0, pad, axis=0)])
            center = np.concatenate([center, np.repeat(center[:1], pad, axis=0)])
            scale = np.concatenate([scale, np.repeat(scale[:1], pad, axis=0)])
        heatmaps = self._heatmaps(inputs)
        # Decoded outside the jitted network: the heatmap points come to the
        # host and are mapped back in float64, as the reference does.
        preds, maxvals = get_final_preds(heatmaps, center, scale, decode=self.decode,
                                         blur_kernel=self.cfg.test.blur_kernel)
        out = np.concatenate([np.asarray(preds), np.asarray(maxvals)], axis=-1)
        return out.astype(np.float32)[:n]


def draw_keypoints(image: np.ndarray, keypoints: Any, joints: Keypoints | None = None, *,
                   min_score: float = 0.0) -> np.ndarray:
    """A copy of ``image`` with each person's joints and limbs drawn.

    Limbs are ``joints.skeleton`` (no limbs without ``joints``), coloured by
    the person's side (left orange, right blue, midline green); each joint's
    marker radius grows with its score.

    Args:
      image: (H, W, 3) uint8 RGB image.
      keypoints: (P, J, 3) x, y, score.
      joints: the dataset's joints (e.g. ``PoseEstimator.joints``).
      min_score: joints scoring below this are not drawn.

    Returns:
      (H, W, 3) uint8 RGB picture.
    """
    canvas = np.ascontiguousarray(read_image(image).copy())
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints: expected shape (P, J, 3), got {keypoints.shape}")
    j = keypoints.shape[1]
    if joints is not None and joints.num_joints != j:
        raise ValueError(f"keypoints: {j} joints per person, but the joints given have "
                         f"{joints.num_joints}")
    skeleton = joints.skeleton if joints is not None else ()
    unit = max(1.0, max(canvas.shape[:2]) / 256.0)
    for person in keypoints:
        for a, b in skeleton:
            if min(person[a, 2], person[b, 2]) < min_score:
                continue
            pa = (int(round(person[a, 0])), int(round(person[a, 1])))
            pb = (int(round(person[b, 0])), int(round(person[b, 1])))
            cv2.line(canvas, pa, pb, joints.limb_colour(a, b), max(1, int(round(2 * unit))),
                     cv2.LINE_AA)
        for k in range(j):
            x, y, score = person[k]
            if score < min_score:
                continue
            radius = max(1, int(round(unit * (1.5 + 4.0 * float(np.clip(score, 0.0, 1.0))))))
            colour = joints.joint_colour(k) if joints is not None else SIDE_COLOURS["centre"]
            cv2.circle(canvas, (int(round(x)), int(round(y))), radius, colour, -1, cv2.LINE_AA)
    return canvas
