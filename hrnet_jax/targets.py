"""Keypoints to Gaussian heatmap targets, as the reference's ``generate_target``.

For each joint (x, y) in input-image pixels, with ``stride = image_size / heatmap_size``
per axis and ``tmp = 3 * sigma``:

* ``mu = int(joint / stride + 0.5)``, where ``int`` truncates toward zero (so a
  joint at x = -3 with stride 4 has mu_x = 0, not -1);
* the window runs from ``ul = int(mu - tmp)`` (inclusive) to ``br = int(mu + tmp + 1)``
  (exclusive); if ``ul_x >= w``, ``ul_y >= h``, ``br_x < 0`` or ``br_y < 0`` the
  joint gets weight 0 and an all-zero map;
* otherwise the map is ``exp(-((x - cx)^2 + (y - cy)^2) / (2 sigma^2))`` inside the
  window clipped to the map and 0 elsewhere, with ``c = ul + floor((2 tmp + 1) / 2)``,
  which is ``mu`` whenever ``3 sigma`` is a whole number; the values are looked up
  in one patch evaluated with NumPy in float32, bit for bit the reference's;
* the map is written only where the weight exceeds 0.5; ``target_weight`` is
  ``joints_vis[:, 0]``, set to 0 for joints whose window misses the map.

The same code runs on NumPy (:func:`generate_target_np`, for data-loading
workers, with no JAX import) and on ``jax.numpy`` (:func:`generate_target`,
:func:`generate_targets`, jitted). Called on concrete joints, the JAX entry
points find the peaks ``mu`` in float64 on the host, as the reference does,
and draw the maps on the device; inside ``jax.jit`` the peaks are found in
float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

ArrayLike = Any


def _check_sizes(image_size: Sequence[int], heatmap_size: Sequence[int], sigma: float,
                 target_type: str) -> tuple[tuple[int, int], tuple[int, int], float]:
    if target_type != "gaussian":
        raise ValueError(f"target_type {target_type!r} is not supported: only 'gaussian' is")
    image_size = tuple(int(v) for v in image_size)
    heatmap_size = tuple(int(v) for v in heatmap_size)
    if len(image_size) != 2 or len(heatmap_size) != 2:
        raise ValueError(
            f"image_size {image_size} and heatmap_size {heatmap_size}: expected (width, height)"
        )
    if min(heatmap_size) <= 0 or min(image_size) <= 0:
        raise ValueError(
            f"image_size {image_size} and heatmap_size {heatmap_size} must be positive"
        )
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return image_size, heatmap_size, float(sigma)


def _check_joints(joints: ArrayLike, joints_vis: ArrayLike, batched: bool) -> None:
    lead = "B, " if batched else ""
    rank = 3 if batched else 2
    js, vs = tuple(np.shape(joints)), tuple(np.shape(joints_vis))
    if len(js) != rank or js[-1] not in (2, 3):
        raise ValueError(
            f"joints: expected shape ({lead}J, 2) or ({lead}J, 3) in input-image pixels, got {js}"
        )
    ok_vis = vs == js[:-1] or (len(vs) == rank and vs[:-1] == js[:-1] and vs[-1] >= 1)
    if not ok_vis:
        num = ", ".join(str(d) for d in js[:-1])
        raise ValueError(
            f"joints_vis: expected shape ({num}) or ({num}, k) to go with joints {js}, got {vs}"
        )


def _peaks(xp: ModuleType, joints: ArrayLike, image_size: tuple[int, int],
           heatmap_size: tuple[int, int]) -> ArrayLike:
    """Heatmap peaks ``mu = int(joint / stride + 0.5)`` (truncation toward zero): (..., J, 2)."""
    stride = np.array([image_size[0] / heatmap_size[0], image_size[1] / heatmap_size[1]])
    coord_dtype = np.float64 if xp is np else xp.promote_types(joints.dtype, np.float32)
    joints = xp.asarray(joints).astype(coord_dtype)[..., :2]
    return xp.trunc(joints / stride.astype(coord_dtype) + 0.5)


@functools.cache
def _gaussian_patch(sigma: float) -> np.ndarray:
    """The unnormalised Gaussian every joint draws, on its whole window: (n, n) float32.

    Entry (r, c) is exp(-((r - p)^2 + (c - p)^2) / (2 sigma^2)) with p =
    floor((6 sigma + 1) / 2) and n = ceil(6 sigma + 1), evaluated with NumPy in
    float32 as the reference does (integer offsets, so the squares are exact).
    """
    tmp = sigma * 3
    offsets = np.arange(math.ceil(2 * tmp + 1), dtype=np.float32) - np.float32((2 * tmp + 1) // 2)
    sq = offsets[:, None] ** 2 + offsets[None, :] ** 2
    patch = np.exp(-sq / np.float32(2 * sigma**2))
    patch.setflags(write=False)
    return patch


def _gaussian_target(xp: ModuleType, mu: ArrayLike, joints_vis: ArrayLike,
                     heatmap_size: tuple[int, int],
                     sigma: float) -> tuple[ArrayLike, ArrayLike]:
    """One sample. mu (J, 2) from :func:`_peaks`, joints_vis (J,) or (J, k) -> ((J, h, w), (J, 1))."""
    w, h = heatmap_size
    tmp = sigma * 3

    mu = xp.asarray(mu)
    vis = xp.asarray(joints_vis)
    vis = (vis if vis.ndim == 1 else vis[:, 0]).astype(np.float32)

    mu_x, mu_y = mu[:, 0], mu[:, 1]
    ul_x, ul_y = xp.trunc(mu_x - tmp), xp.trunc(mu_y - tmp)
    br_x, br_y = xp.trunc(mu_x + tmp + 1), xp.trunc(mu_y + tmp + 1)
    off_map = (ul_x >= w) | (ul_y >= h) | (br_x < 0) | (br_y < 0)
    weight = xp.where(off_map, xp.zeros_like(vis), vis)

    xs = xp.arange(w, dtype=mu.dtype)[None, :]
    ys = xp.arange(h, dtype=mu.dtype)[None, :]
    in_x = (xs >= ul_x[:, None]) & (xs < br_x[:, None])  # (J, w)
    in_y = (ys >= ul_y[:, None]) & (ys < br_y[:, None])  # (J, h)
    # Every joint draws the same patch, only placed differently: it is looked up
    # rather than recomputed, so each value is NumPy's float32 exp exactly as in
    # the reference (XLA's exp differs from it by up to ~1e-6 relative).
    patch = _gaussian_patch(sigma)
    last = patch.shape[0] - 1
    col = xp.clip(xs - ul_x[:, None], 0, last).astype(np.int32)  # (J, w)
    row = xp.clip(ys - ul_y[:, None], 0, last).astype(np.int32)  # (J, h)
    gauss = xp.asarray(patch)[row[:, :, None], col[:, None, :]]  # (J, h, w)
    write = in_y[:, :, None] & in_x[:, None, :] & (weight > 0.5)[:, None, None]
    target = xp.where(write, gauss, xp.zeros((), np.float32))
    return target, weight[:, None]


def generate_target_np(
    joints: ArrayLike,
    joints_vis: ArrayLike,
    *,
    image_size: Sequence[int],
    heatmap_size: Sequence[int],
    sigma: float,
    target_type: str = "gaussian",
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of :func:`generate_target` for data-loading workers (no JAX needed).

    Coordinates are handled in float64 as in the reference's data pipeline.

    Args:
      joints: (J, 2) or (J, 3) joint positions (x, y[, ...]) in input-image pixels.
      joints_vis: (J,) or (J, k) visibility; column 0 is used.
      image_size: network input (width, height).
      heatmap_size: heatmap (width, height).
      sigma: Gaussian standard deviation in heatmap pixels.
      target_type: only ``'gaussian'``.

    Returns:
      ``(target, target_weight)``: (J, h, w) and (J, 1), float32 NumPy arrays.
    """
    image_size, heatmap_size, sigma = _check_sizes(image_size, heatmap_size, sigma, target_type)
    joints, joints_vis = np.asarray(joints), np.asarray(joints_vis)
    _check_joints(joints, joints_vis, batched=False)
    mu = _peaks(np, joints, image_size, heatmap_size)
    return _gaussian_target(np, mu, joints_vis, heatmap_size, sigma)


@functools.cache
def _jitted(batched: bool):
    import jax
    import jax.numpy as jnp

    def one(mu, joints_vis, heatmap_size, sigma):
        return _gaussian_target(jnp, mu, joints_vis, heatmap_size, sigma)

    fn = jax.vmap(one, in_axes=(0, 0, None, None)) if batched else one
    return jax.jit(fn, static_argnums=(2, 3))


def _jax_targets(joints, joints_vis, image_size, heatmap_size, sigma, batched):
    import jax
    import jax.numpy as jnp

    try:
        # Concrete joints: the peaks are found in float64 on the host, as the
        # reference does; a joint a hair short of a half stride (9.9999999999 px
        # at stride 4) would round the other way in float32. Peaks are whole
        # numbers, exact in float32 on the device.
        mu = _peaks(np, np.asarray(joints), image_size, heatmap_size).astype(np.float32)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        mu = _peaks(jnp, jnp.asarray(joints), image_size, heatmap_size)
    return _jitted(batched)(mu, joints_vis, heatmap_size, sigma)


def generate_target(
    joints: ArrayLike,
    joints_vis: ArrayLike,
    *,
    image_size: Sequence[int],
    heatmap_size: Sequence[int],
    sigma: float,
    target_type: str = "gaussian",
) -> tuple[Any, Any]:
    """Gaussian heatmaps and weights for one person (jitted; sizes and sigma static).

    Args:
      joints: (J, 2) or (J, 3) joint positions (x, y[, ...]) in input-image pixels.
      joints_vis: (J,) or (J, k) visibility; column 0 is used.
      image_size: network input (width, height).
      heatmap_size: heatmap (width, height).
      sigma: Gaussian standard deviation in heatmap pixels.
      target_type: only ``'gaussian'``.

    Returns:
      ``(target, target_weight)``: (J, h, w) and (J, 1), float32.
    """
    image_size, heatmap_size, sigma = _check_sizes(image_size, heatmap_size, sigma, target_type)
    _check_joints(joints, joints_vis, batched=False)
    return _jax_targets(joints, joints_vis, image_size, heatmap_size, sigma, batched=False)


def generate_targets(
    joints: ArrayLike,
    joints_vis: ArrayLike,
    *,
    image_size: Sequence[int],
    heatmap_size: Sequence[int],
    sigma: float,
    target_type: str = "gaussian",
) -> tuple[Any, Any]:
    """:func:`generate_target` vmapped over a leading batch axis.

    Args:
      joints: (B, J, 2) or (B, J, 3) joint positions in input-image pixels.
      joints_vis: (B, J) or (B, J, k) visibility; column 0 is used.
      image_size: network input (width, height).
      heatmap_size: heatmap (width, height).
      sigma: Gaussian standard deviation in heatmap pixels.
      target_type: only ``'gaussian'``.

    Returns:
      ``(target, target_weight)``: (B, J, h, w) and (B, J, 1), float32.
    """
    image_size, heatmap_size, sigma = _check_sizes(image_size, heatmap_size, sigma, target_type)
    _check_joints(joints, joints_vis, batched=True)
    return _jax_targets(joints, joints_vis, image_size, heatmap_size, sigma, batched=True)
