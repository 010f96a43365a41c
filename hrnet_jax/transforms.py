"""Affine geometry between original images, network inputs and heatmaps.

One implementation serves two callers:

* the data pipeline and host-side decoding, on NumPy inputs:
  :func:`get_affine_transform` returns a float64 ``(2, 3)`` matrix for
  ``cv2.warpAffine``, solved by ``cv2.getAffineTransform`` from the reference's
  three-point construction, as the reference does;
* decoding, on JAX arrays inside ``jax.jit``: the same code runs on ``jax.numpy``
  (float32 unless x64 is enabled) and broadcasts over leading batch axes.

The array module is picked from the inputs: any JAX array (or tracer) selects
``jax.numpy``, otherwise NumPy. JAX is never imported by this module, so data
loading worker processes that only use NumPy never pay for it; OpenCV is
imported on first use of the NumPy path.

``scale`` is the person box size in units of ``PIXEL_STD`` (200) pixels, as in
the reference; a scalar scale means ``(s, s)``. Sizes are ``(width, height)``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from hrnet_jax.constants import PIXEL_STD

ArrayLike = Any


def array_namespace(*values: Any) -> ModuleType:
    """Returns ``jax.numpy`` if any value is a JAX array or tracer, else ``numpy``.

    Shared by the modules whose maths serves both the NumPy data pipeline and
    jitted JAX code, so that each formula is written once.
    """
    jax = sys.modules.get("jax")
    if jax is not None and any(isinstance(v, jax.Array) for v in values):
        import jax.numpy as jnp

        return jnp
    return np


def _float_dtype(xp: ModuleType) -> Any:
    # The reference does its geometry in float64; JAX gives float32 unless x64 is on.
    if xp is np:
        return np.float64
    return xp.zeros((), dtype=float).dtype


def _own_float_dtype(value: Any) -> np.dtype:
    """The floating dtype NumPy gives ``value`` (float64 for Python numbers and integers)."""
    value_dtype = np.asarray(value).dtype
    return value_dtype if np.issubdtype(value_dtype, np.floating) else np.dtype(np.float64)


def _rotate(xp: ModuleType, y: ArrayLike, angle_rad: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Rotates the point (0, y) by ``angle_rad``; returns (x', y')."""
    sn, cs = xp.sin(angle_rad), xp.cos(angle_rad)
    return -y * sn, y * cs


def _third_point(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """The point completing a right angle at ``b``: b + rot90(a - b). Shape (..., 2)."""
    d = a - b
    return b + _stack_last(-d[..., 1], d[..., 0])


def _stack_last(x: ArrayLike, y: ArrayLike) -> ArrayLike:
    xp = array_namespace(x, y)
    x, y = xp.broadcast_arrays(x, y)
    return xp.stack([x, y], axis=-1)


def _solve_three_points(src: ArrayLike, dst: ArrayLike) -> ArrayLike:
    """The affine map sending three points ``src`` onto ``dst``.

    ``src``, ``dst``: (..., 3, 2). Returns (..., 2, 3). Solved from the two
    difference vectors (a 2x2 inverse) so float32 keeps relative accuracy
    even far from the origin.
    """
    xp = array_namespace(src, dst)
    p0, q0 = src[..., 0, :], dst[..., 0, :]
    p1, p2 = src[..., 1, :] - p0, src[..., 2, :] - p0
    q1, q2 = dst[..., 1, :] - q0, dst[..., 2, :] - q0
    # P = [p1 p2] (columns), Q = [q1 q2]; A = Q P^-1.
    det = p1[..., 0] * p2[..., 1] - p2[..., 0] * p1[..., 1]
    inv00, inv01 = p2[..., 1] / det, -p2[..., 0] / det
    inv10, inv11 = -p1[..., 1] / det, p1[..., 0] / det
    a00 = q1[..., 0] * inv00 + q2[..., 0] * inv10
    a01 = q1[..., 0] * inv01 + q2[..., 0] * inv11
    a10 = q1[..., 1] * inv00 + q2[..., 1] * inv10
    a11 = q1[..., 1] * inv01 + q2[..., 1] * inv11
    t0 = q0[..., 0] - (a00 * p0[..., 0] + a01 * p0[..., 1])
    t1 = q0[..., 1] - (a10 * p0[..., 0] + a11 * p0[..., 1])
    row0 = xp.stack([a00, a01, t0], axis=-1)
    row1 = xp.stack([a10, a11, t1], axis=-1)
    return xp.stack([row0, row1], axis=-2)


def get_affine_transform(
    center: ArrayLike,
    scale: ArrayLike,
    rot: ArrayLike,
    output_size: Sequence[float] | ArrayLike,
    shift: Sequence[float] | ArrayLike = (0, 0),
    inv: bool = False,
) -> ArrayLike:
    """The affine map from a person box in the image to an output window.

    The box is centred at ``center`` with size ``scale * 200`` pixels and is
    rotated by ``rot`` degrees; it is mapped onto an ``output_size`` window so
    that the box centre lands at the window centre and the box width spans the
    window width (the map is a similarity: the box height only enters through
    ``shift``). Built as in the reference: three points (the centre, a point
    half a box width above it turned by ``rot``, and a third one at a right
    angle) rounded to float32, then the exact affine map through them.

    Args:
      center: box centre (x, y) in image pixels, shape (..., 2).
      scale: box size in units of 200 px, shape (..., 2) as (sx, sy), or
        (...) for (s, s). On NumPy inputs a float32 scale is multiplied by 200
        in float32, as in the reference.
      rot: rotation in degrees, a scalar or shape (...).
      output_size: (width, height) of the output window.
      shift: offset of the box centre in units of the box size, (2,).
      inv: if true, the map from the output window back to the image.

    Returns:
      (..., 2, 3) matrix ``M`` with ``M @ [x, y, 1]`` the mapped point: float64
      on NumPy inputs, the default JAX float dtype on JAX inputs.
    """
    xp = array_namespace(center, scale, rot, output_size, shift)
    dtype = _float_dtype(xp)
    # The reference multiplies the scale by 200 (and that by the shift) in the
    # scale's own precision: float32 scales, as COCO records and detector boxes
    # carry, give a float32 box size.
    box_dtype = _own_float_dtype(scale) if xp is np else dtype
    shift_dtype = np.result_type(box_dtype, _own_float_dtype(shift)) if xp is np else dtype
    center = xp.asarray(center, dtype=dtype)
    scale = xp.asarray(scale, dtype=dtype)
    rot = xp.asarray(rot, dtype=dtype)
    shift = xp.asarray(shift, dtype=dtype)
    output_size = xp.asarray(output_size, dtype=dtype)
    if center.ndim < 1 or center.shape[-1] != 2:
        raise ValueError(f"center: expected shape (..., 2) as (x, y), got {center.shape}")
    if scale.ndim == center.ndim - 1:
        scale = xp.stack([scale, scale], axis=-1)
    elif scale.ndim != center.ndim or scale.shape[-1] != 2:
        raise ValueError(
            f"scale: expected shape {center.shape[:-1] + (2,)} as (sx, sy) or "
            f"{center.shape[:-1]} for (s, s) to go with center {center.shape}, got {scale.shape}"
        )
    if output_size.shape != (2,):
        raise ValueError(f"output_size: expected (width, height), got shape {output_size.shape}")
    if shift.shape != (2,):
        raise ValueError(f"shift: expected (2,), got shape {shift.shape}")

    box = (scale.astype(box_dtype) * PIXEL_STD).astype(dtype)
    box_shift = (box.astype(shift_dtype) * shift.astype(shift_dtype)).astype(dtype)
    out_w, out_h = output_size[0], output_size[1]
    dir_x, dir_y = _rotate(xp, box[..., 0] * -0.5, np.pi * rot / 180)

    # The reference stores its three points in float32 arrays (and finds the
    # third one in float32 arithmetic) before handing them to OpenCV.
    f32 = np.float32
    src0 = (center + box_shift).astype(f32)
    src1 = (center + _stack_last(dir_x, dir_y) + box_shift).astype(f32)
    dst0 = _stack_last(out_w * 0.5, out_h * 0.5).astype(f32)
    dst1 = _stack_last(out_w * 0.5, out_h * 0.5 - out_w * 0.5).astype(f32)
    src = xp.stack([src0, src1, _third_point(src0, src1)], axis=-2)
    dst = xp.stack([dst0, dst1, _third_point(dst0, dst1)], axis=-2)
    if inv:
        src, dst = dst, src
    if xp is np:
        return _opencv_three_points(src, dst)
    src, dst = xp.broadcast_arrays(src.astype(dtype), dst.astype(dtype))
    return _solve_three_points(src, dst)


def _opencv_three_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``cv2.getAffineTransform`` on each (3, 2) pair of ``src`` and ``dst`` (..., 3, 2).

    The reference's matrices come from OpenCV's solver: using it keeps every
    matrix, and every point mapped with it, equal to the reference's to the
    last bit (a different, equally exact solver breaks float32 rounding ties
    the other way now and then).
    """
    import cv2  # host-side geometry only; workers that crop images load it anyway

    src, dst = np.broadcast_arrays(np.asarray(src, np.float32), np.asarray(dst, np.float32))
    lead = src.shape[:-2]
    pairs = zip(src.reshape(-1, 3, 2), dst.reshape(-1, 3, 2), strict=True)
    mats = [cv2.getAffineTransform(np.ascontiguousarray(a), np.ascontiguousarray(b))
            for a, b in pairs]
    return np.array(mats, dtype=np.float64).reshape(lead + (2, 3))


def affine_transform(pt: ArrayLike, t: ArrayLike) -> ArrayLike:
    """Applies the (2, 3) affine matrix ``t`` to points.

    Args:
      pt: point(s) (x, y), shape (..., 2); further columns are ignored.
      t: matrix, shape (2, 3), or (..., 2, 3) broadcasting against ``pt``'s
        leading axes.

    Returns:
      (..., 2) mapped points.
    """
    xp = array_namespace(pt, t)
    pt = xp.asarray(pt)
    t = xp.asarray(t)
    if pt.ndim < 1 or pt.shape[-1] < 2:
        raise ValueError(f"pt: expected shape (..., 2) as (x, y), got {pt.shape}")
    if t.ndim < 2 or t.shape[-2:] != (2, 3):
        raise ValueError(f"t: expected an affine matrix of shape (2, 3), got {t.shape}")
    x, y = pt[..., 0:1], pt[..., 1:2]
    # (..., 1) against rows (..., 2): each output coordinate is t_i0 x + t_i1 y + t_i2.
    return t[..., 0] * x + t[..., 1] * y + t[..., 2]


def transform_preds(
    coords: ArrayLike, center: ArrayLike, scale: ArrayLike, output_size: Sequence[float]
) -> ArrayLike:
    """Maps heatmap coordinates back to original-image pixels.

    The inverse of :func:`get_affine_transform` with rotation 0.

    Args:
      coords: (J, 2) or (B, J, 2) points (x, y) in heatmap pixels.
      center: (2,) or (B, 2) box centres in image pixels.
      scale: (2,) or (B, 2) box sizes in units of 200 px ((), (B,) for (s, s)).
      output_size: heatmap (width, height).

    Returns:
      Points with the shape of ``coords``, in image pixels.
    """
    xp = array_namespace(coords, center, scale)
    coords = xp.asarray(coords)
    center = xp.asarray(center)
    if coords.ndim not in (2, 3) or coords.shape[-1] != 2:
        raise ValueError(f"coords: expected shape (J, 2) or (B, J, 2), got {coords.shape}")
    if center.shape != coords.shape[:-2] + (2,):
        raise ValueError(
            f"center: expected shape {coords.shape[:-2] + (2,)} to go with coords "
            f"{coords.shape}, got {center.shape}"
        )
    trans = get_affine_transform(center, scale, 0, output_size, inv=True)
    return affine_transform(coords, trans[..., None, :, :])
