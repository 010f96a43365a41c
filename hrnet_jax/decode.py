"""From heatmaps to keypoints in the original image, and the flip test.

All functions are jitted and free of loops over batch or joints. Called on
concrete arrays, :func:`get_final_preds` maps its (B, J, 2) heatmap points back
to the image in float64 on the host, as the reference does; inside ``jax.jit``
that step runs in float32 on the device (within about 2e-4 px of it for
coordinates up to a few thousand pixels).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.metrics import check_heatmaps, get_max_preds
from hrnet_jax.transforms import transform_preds

ArrayLike = Any
FlipPairs = Sequence[Sequence[int]]


@functools.partial(jax.jit, static_argnames=("post_process",))
def _heatmap_coords(heatmaps, post_process):
    """Argmax coordinates in heatmap pixels, refined by a quarter pixel: (B, J, 2), (B, J, 1)."""
    b, j, h, w = heatmaps.shape
    coords, maxvals = get_max_preds(heatmaps)
    if post_process:
        px = jnp.floor(coords[..., 0] + 0.5).astype(jnp.int32)
        py = jnp.floor(coords[..., 1] + 0.5).astype(jnp.int32)
        # The reference refines only where 1 < px < w - 1 and 1 < py < h - 1
        # (so column and row 1 are left alone too).
        inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
        flat = heatmaps.reshape(b, j, h * w).astype(jnp.float32)
        neighbours = jnp.stack(
            [py * w + px + 1, py * w + px - 1, (py + 1) * w + px, (py - 1) * w + px], axis=-1
        )
        vals = jnp.take_along_axis(flat, jnp.clip(neighbours, 0, h * w - 1), axis=-1)
        diff = jnp.stack([vals[..., 0] - vals[..., 1], vals[..., 2] - vals[..., 3]], axis=-1)
        coords = coords + jnp.where(inside[..., None], jnp.sign(diff) * 0.25, 0.0)
    return coords, maxvals


def get_final_preds(
    heatmaps: ArrayLike, center: ArrayLike, scale: ArrayLike, post_process: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Keypoints in original-image pixels from a batch of heatmaps.

    Each heatmap's argmax (:func:`~hrnet_jax.metrics.get_max_preds`) is, with
    ``post_process``, moved a quarter pixel towards its higher neighbour along
    x and along y (where ``1 < px < W - 1`` and ``1 < py < H - 1``), then mapped
    through the inverse of the crop transform of (center, scale, rotation 0,
    heatmap size).

    Args:
      heatmaps: (B, J, H, W).
      center: (B, 2) box centres (x, y) in image pixels.
      scale: (B, 2) box sizes in units of 200 px.
      post_process: apply the quarter-pixel refinement.

    Returns:
      ``(preds, maxvals)``: (B, J, 2) float32 (x, y) in image pixels and
      (B, J, 1) heatmap maxima. On concrete inputs the map back runs in
      float64 from the given ``center`` and ``scale`` and is rounded once to
      float32, as in the reference; under ``jax.jit`` it runs in float32.
    """
    b = check_heatmaps(heatmaps)[0]
    cs, ss = tuple(jnp.shape(center)), tuple(jnp.shape(scale))
    if cs != (b, 2):
        raise ValueError(f"center: expected shape (B, 2) = {(b, 2)} to go with heatmaps "
                         f"{tuple(jnp.shape(heatmaps))}, got {cs}")
    if ss != (b, 2):
        raise ValueError(f"scale: expected shape (B, 2) = {(b, 2)} to go with heatmaps "
                         f"{tuple(jnp.shape(heatmaps))}, got {ss}")
    h, w = jnp.shape(heatmaps)[2:]
    coords, maxvals = _heatmap_coords(jnp.asarray(heatmaps), bool(post_process))
    try:
        # Concrete inputs: map back in float64 and round once to float32, as the
        # reference does (its centre and scale are float64). Only (B, J, 2)
        # coordinates come to the host.
        # Centre and scale keep their own precision: a float32 scale makes a
        # float32 box size there too.
        coords64 = np.asarray(coords, dtype=np.float64)
        center_np = _float_array(center)
        scale_np = _float_array(scale)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        preds = transform_preds(coords, jnp.asarray(center).astype(coords.dtype),
                                jnp.asarray(scale).astype(coords.dtype), (w, h))
        return preds, maxvals
    preds = transform_preds(coords64, center_np, scale_np, (w, h))
    return jnp.asarray(preds.astype(np.float32)), maxvals


def _float_array(value: ArrayLike) -> np.ndarray:
    array = np.asarray(value)
    return array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float64)


def _flip_permutation(flip_pairs: FlipPairs, num_joints: int) -> tuple[int, ...]:
    order = list(range(num_joints))
    for pair in flip_pairs:
        a, b = (int(i) for i in pair)
        if not (0 <= a < num_joints and 0 <= b < num_joints):
            raise ValueError(f"flip_pairs: pair {tuple(pair)} is out of range for "
                             f"{num_joints} joints")
        order[a], order[b] = order[b], order[a]
    return tuple(order)


@functools.partial(jax.jit, static_argnames=("order",))
def _flip_back(heatmaps, order):
    return heatmaps[:, jnp.array(order), :, ::-1]


@functools.partial(jax.jit, static_argnames=("order", "shift"))
def _fuse_flip(output, output_flipped, order, shift):
    flipped = _flip_back(output_flipped, order)
    if shift:
        # The mirrored input's features sit one pixel off; the reference moves
        # the flipped-back maps one column right, keeping column 0.
        flipped = jnp.concatenate([flipped[..., :1], flipped[..., :-1]], axis=-1)
    return (output + flipped) * 0.5


def flip_back(heatmaps_flipped: ArrayLike, flip_pairs: FlipPairs) -> jax.Array:
    """Undoes a horizontal flip on heatmaps: mirrors the width axis, swaps left/right joints.

    Args:
      heatmaps_flipped: (B, J, H, W) network output on mirrored inputs.
      flip_pairs: pairs of joint indices that swap, e.g. ``MPII_FLIP_PAIRS``.

    Returns:
      (B, J, H, W) heatmaps in the unmirrored frame.
    """
    j = check_heatmaps(heatmaps_flipped, "heatmaps_flipped")[1]
    return _flip_back(heatmaps_flipped, _flip_permutation(flip_pairs, j))


def fuse_flip(
    output: ArrayLike, output_flipped: ArrayLike, flip_pairs: FlipPairs, shift: bool = True
) -> jax.Array:
    """The flip test: averages heatmaps with those of the mirrored input.

    ``output_flipped`` is flipped back (:func:`flip_back`), optionally shifted
    one column right (``out[..., 1:] = in[..., :-1]``, column 0 kept), and
    averaged with ``output``.

    Args:
      output: (B, J, H, W) network output on the inputs.
      output_flipped: (B, J, H, W) network output on the mirrored inputs.
      flip_pairs: pairs of joint indices that swap.
      shift: apply the one-column shift (the reference's ``TEST.SHIFT_HEATMAP``).

    Returns:
      (B, J, H, W) fused heatmaps.
    """
    shape = check_heatmaps(output, "output")
    if tuple(jnp.shape(output_flipped)) != shape:
        raise ValueError(f"output_flipped: expected the output's shape (B, J, H, W) = {shape}, "
                         f"got {tuple(jnp.shape(output_flipped))}")
    return _fuse_flip(output, output_flipped, _flip_permutation(flip_pairs, shape[1]),
                      bool(shift))
