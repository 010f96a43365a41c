"""From heatmaps to keypoints in the original image, and the flip test.

All functions are jitted and free of loops over batch or joints. Three decoders
turn a heatmap into a point in heatmap pixels (:data:`DECODERS`, see
:func:`heatmap_coords`): the integer argmax, the reference's quarter-pixel
shift, and DARK's Taylor refinement. Called on concrete arrays,
:func:`get_final_preds` maps its (B, J, 2) heatmap points back to the image in
float64 on the host, as the reference does; inside ``jax.jit`` that step runs
in float32 on the device (within about 2e-4 px of it for coordinates up to a
few thousand pixels).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hrnet_jax.config import DECODERS
from hrnet_jax.transforms import transform_preds

ArrayLike = Any
FlipPairs = Sequence[Sequence[int]]

# DECODERS, the heatmap decoders by name (defined with the configuration that
# chooses one, test.decode): the integer argmax; the argmax moved a quarter
# pixel towards the higher neighbour (the reference's post-processing); and
# DARK (Zhang et al., CVPR 2020).
__all__ = ["DECODERS", "check_heatmaps", "get_max_preds", "heatmap_coords", "get_final_preds",
           "flip_permutation", "flip_back", "fuse_flip", "fuse_flip_by_order"]
# The fixed kernels that cv2.getGaussianKernel(k, 0) returns for k up to 9 (in
# the OpenCV this project requires, 4.9+), used by the DARK authors'
# cv2.GaussianBlur(..., (k, k), 0); larger k get sampled Gaussians.
_OPENCV_SMALL_KERNELS = {
    1: (1.0,),
    3: (1 / 4, 2 / 4, 1 / 4),
    5: (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16),
    7: (1 / 32, 3.5 / 32, 7 / 32, 9 / 32, 7 / 32, 3.5 / 32, 1 / 32),
    9: (4 / 256, 13 / 256, 30 / 256, 51 / 256, 60 / 256, 51 / 256, 30 / 256, 13 / 256, 4 / 256),
}
# DARK's floor before the log: blurred values below it count as this.
_DARK_LOG_FLOOR = 1e-10


# Heatmaps given channels-last are at least this many pixels on a side in
# practice (a 128-pixel input); joints rarely reach that number.
_MIN_CHANNELS_LAST_SIDE = 32


def check_heatmaps(heatmaps: ArrayLike, name: str = "heatmaps") -> tuple[int, int, int, int]:
    """Raises ValueError unless ``heatmaps`` is (B, J, H, W); returns the shape.

    Channels-last input (B, H, W, J) is recognised where the shape gives it
    away: dims 1 and 2 equal, at least 32, and the last at most half of them,
    e.g. (48, 64, 64, 16). Smaller or less lopsided shapes such as
    (B, 16, 16, 12) or (B, 8, 8, 4) are ambiguous and taken as channels first,
    as the reference takes every 4-d array.
    """
    shape = tuple(jnp.shape(heatmaps))
    if len(shape) == 3:
        raise ValueError(
            f"{name}: expected a batch of heatmaps of shape (B, J, H, W), got {shape} "
            "(add a leading batch axis for a single sample)"
        )
    if len(shape) != 4:
        raise ValueError(f"{name}: expected heatmaps of shape (B, J, H, W), got {shape}")
    if shape[1] == shape[2] >= _MIN_CHANNELS_LAST_SIDE and 2 * shape[3] <= shape[1]:
        raise ValueError(
            f"{name}: expected heatmaps of shape (B, J, H, W) (channels first), got {shape}, "
            f"which looks channels-last (B, H, W, J); transpose with (0, 3, 1, 2)"
        )
    return shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- argmax


def _first_index(values, target, axis_size):
    """Index of the first entry of the last axis equal to ``target`` (..., 1); clipped."""
    iota = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
    first = jnp.min(jnp.where(values == target, iota, axis_size), axis=-1)
    return jnp.minimum(first, axis_size - 1)


@jax.jit
def _max_preds(heatmaps):
    _, _, h, w = heatmaps.shape
    # The first flat argmax, found as the first row holding the maximum, then the
    # first column of that row holding it: the same index as jnp.argmax over
    # H * W (ties go to the lowest index), but plain max/min reductions, which
    # XLA runs about 20 times faster than a variadic argmax reduction on CPU.
    row_max = jnp.max(heatmaps, axis=-1)  # (B, J, H)
    maxvals = jnp.max(row_max, axis=-1, keepdims=True)  # (B, J, 1)
    y = _first_index(row_max, maxvals, h)
    row = jnp.take_along_axis(heatmaps, y[..., None, None], axis=2)[..., 0, :]  # (B, J, W)
    x = _first_index(row, maxvals, w)
    coords = jnp.stack([x, y], axis=-1).astype(jnp.float32)
    coords = jnp.where(maxvals > 0, coords, 0.0)
    return coords, maxvals


def get_max_preds(heatmaps: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Location and value of each heatmap's maximum.

    ``x = idx % W``, ``y = floor(idx / W)`` for ``idx`` the first flat argmax;
    both are 0 where the maximum is not positive.

    Args:
      heatmaps: (B, J, H, W).

    Returns:
      ``(preds, maxvals)``: (B, J, 2) float32 as (x, y), and (B, J, 1) in the
      heatmaps' dtype.
    """
    check_heatmaps(heatmaps)
    return _max_preds(heatmaps)


# --------------------------------------------------------------------------- decoders


def _check_decoder(decode: Any) -> str:
    if not isinstance(decode, str) or decode not in DECODERS:
        raise ValueError(f"decode: expected one of {DECODERS}, got {decode!r}")
    return decode


def _check_blur_kernel(blur_kernel: Any) -> int:
    try:
        size = operator.index(blur_kernel)
    except TypeError:
        size = None
    if size is None or isinstance(blur_kernel, bool) or size < 1 or size % 2 == 0:
        raise ValueError(f"blur_kernel: expected an odd kernel size >= 1 (11 for heatmaps of "
                         f"sigma 2), got {blur_kernel!r}")
    return size


def _gaussian_taps(size: int) -> np.ndarray:
    """OpenCV's 1-D Gaussian for ``size`` taps and no sigma given: (size,) float64, sum 1.

    Sizes 1 to 9 use OpenCV's fixed tables (e.g. ``[1, 4, 6, 4, 1] / 16``);
    larger sizes sample ``exp(-i^2 / (2 sigma^2))`` for ``i = -(size-1)/2 ..
    (size-1)/2`` with ``sigma = 0.3 ((size - 1) / 2 - 1) + 0.8`` (2.0 for 11) and
    normalise to sum 1, as ``cv2.getGaussianKernel(size, 0)`` does.
    """
    size = _check_blur_kernel(size)
    if size in _OPENCV_SMALL_KERNELS:
        taps = np.array(_OPENCV_SMALL_KERNELS[size], np.float64)
    else:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
        offsets = np.arange(size, dtype=np.float64) - (size - 1) * 0.5
        taps = np.exp(-0.5 / (sigma * sigma) * offsets * offsets)
    return taps / taps.sum()


def _gaussian_blur(maps, size):
    """Zero-padded separable Gaussian blur of (B, J, H, W) float32 maps, same shape."""
    b, j, h, w = maps.shape
    taps = jnp.asarray(_gaussian_taps(size), jnp.float32)
    radius = (size - 1) // 2
    x = maps.reshape(b * j, 1, h, w)
    # HIGHEST: the default may run float32 convolutions in TF32 on GPUs, whose
    # 10-bit mantissa would show in the log-space derivatives.
    for kernel, padding in ((taps.reshape(1, 1, 1, size), ((0, 0), (radius, radius))),
                            (taps.reshape(1, 1, size, 1), ((radius, radius), (0, 0)))):
        x = lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                     precision=lax.Precision.HIGHEST)
    return x.reshape(b, j, h, w)


def _dark_offsets(heatmaps, coords, blur_kernel):
    """DARK's Newton step at each integer argmax: (B, J, 2) float32, zero where not refined."""
    b, j, h, w = heatmaps.shape
    maps = heatmaps.astype(jnp.float32)
    blurred = _gaussian_blur(maps, blur_kernel)
    original_max = jnp.max(maps, axis=(2, 3), keepdims=True)
    blurred_max = jnp.max(blurred, axis=(2, 3), keepdims=True)
    # The authors divide by the blurred maximum unguarded (NaN for an all-zero
    # map); a zero maximum here keeps the blurred map as it is.
    has_max = blurred_max != 0
    ratio = jnp.where(has_max, original_max / jnp.where(has_max, blurred_max, 1.0), 1.0)
    log_maps = jnp.log(jnp.maximum(blurred * ratio, _DARK_LOG_FLOOR))

    px = coords[..., 0].astype(jnp.int32)
    py = coords[..., 1].astype(jnp.int32)
    # The authors' bounds, 1 < px < W - 2 and 1 < py < H - 2: the widest stencil
    # reaches two pixels either way.
    inside = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    steps = ((0, 0), (1, 0), (-1, 0), (2, 0), (-2, 0), (0, 1), (0, -1), (0, 2), (0, -2),
             (1, 1), (-1, 1), (1, -1), (-1, -1))
    flat_index = jnp.stack([(py + sy) * w + px + sx for sx, sy in steps], axis=-1)
    values = jnp.take_along_axis(log_maps.reshape(b, j, h * w),
                                 jnp.clip(flat_index, 0, h * w - 1), axis=-1)
    f = {step: values[..., k] for k, step in enumerate(steps)}
    dx = 0.5 * (f[1, 0] - f[-1, 0])
    dy = 0.5 * (f[0, 1] - f[0, -1])
    dxx = 0.25 * (f[2, 0] - 2 * f[0, 0] + f[-2, 0])
    dyy = 0.25 * (f[0, 2] - 2 * f[0, 0] + f[0, -2])
    dxy = 0.25 * (f[1, 1] - f[-1, 1] - f[1, -1] + f[-1, -1])
    det = dxx * dyy - dxy * dxy
    refine = inside & (det != 0)
    det = jnp.where(refine, det, 1.0)
    # -H^{-1} g with H^{-1} = [[dyy, -dxy], [-dxy, dxx]] / det.
    offset = jnp.stack([(dxy * dy - dyy * dx) / det, (dxy * dx - dxx * dy) / det], axis=-1)
    return jnp.where(refine[..., None], offset, 0.0)


@functools.partial(jax.jit, static_argnames=("decode", "blur_kernel"))
def _heatmap_coords(heatmaps, decode, blur_kernel):
    """Heatmap-pixel coordinates by ``decode``: (B, J, 2) float32, (B, J, 1)."""
    b, j, h, w = heatmaps.shape
    coords, maxvals = get_max_preds(heatmaps)
    if decode == "reference":
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
    elif decode == "dark":
        coords = coords + _dark_offsets(heatmaps, coords, blur_kernel)
    return coords, maxvals


def heatmap_coords(
    heatmaps: ArrayLike, decode: str = "reference", *, blur_kernel: int = 11
) -> tuple[jax.Array, jax.Array]:
    """Each heatmap's keypoint in heatmap pixels, by one of :data:`DECODERS`.

    All start from the first integer argmax ``(px, py)`` of each map
    (:func:`get_max_preds`; ``(0, 0)`` where the maximum is
    not positive) and differ in the sub-pixel refinement:

    * ``"argmax"``: none.
    * ``"reference"``: ``px += 0.25 sign(m[py, px+1] - m[py, px-1])`` and
      ``py += 0.25 sign(m[py+1, px] - m[py-1, px])``, where ``1 < px < W - 1``
      and ``1 < py < H - 1``. Off by up to a quarter pixel per axis: a peak
      half-way between two pixels decodes 0.25 px from it.
    * ``"dark"`` (Zhang et al., CVPR 2020, "Distribution-Aware Coordinate
      Representation for Human Pose Estimation"), as the authors' code does it:

      1. modulate: blur each map with the separable Gaussian that the
         authors' ``cv2.GaussianBlur(m, (k, k), 0)`` uses for ``k =
         blur_kernel`` taps (``sigma = 0.3 ((k - 1) / 2 - 1) + 0.8``, 2.0 for
         11; OpenCV's fixed tables for k <= 9, e.g. ``[1, 4, 6, 4, 1] / 16``),
         taking the map as zero outside (the authors pad it with
         ``(k - 1) / 2`` zeros, so no tap reaches OpenCV's own border rule; no
         edge replication), then rescale so each blurred map's maximum is the
         original's;
      2. ``L = log(max(blurred, 1e-10))``;
      3. where ``1 < px < W - 2`` and ``1 < py < H - 2`` (the stencils reach two
         pixels), with ``L`` read at offsets from ``(px, py)``::

           g   = 0.5  * (L(1, 0) - L(-1, 0),  L(0, 1) - L(0, -1))
           Lxx = 0.25 * (L(2, 0) - 2 L(0, 0) + L(-2, 0))
           Lyy = 0.25 * (L(0, 2) - 2 L(0, 0) + L(0, -2))
           Lxy = 0.25 * (L(1, 1) - L(-1, 1) - L(1, -1) + L(-1, -1))

         and, where ``det = Lxx Lyy - Lxy^2 != 0``, a Newton step on the
         log-likelihood: ``(px, py) += -[[Lxx, Lxy], [Lxy, Lyy]]^{-1} g``.

      For a map whose blurred log is quadratic near the peak (a Gaussian) the
      step lands on its centre: within 1e-3 px on sampled sigma-2 Gaussians
      away from the border, where the quarter-pixel shift is off by up to
      0.25 px per axis. Within about the blur radius of the border the zero
      padding pulls the point inwards (a tenth to a third of a pixel for
      sigma 2), as in the authors' code. The step is not clamped (as there
      either): a nearly singular Hessian on a map that is not peaked may move
      the point far.

    ``maxvals`` are always the maxima of the unmodulated heatmaps, as the
    authors return them.

    Args:
      heatmaps: (B, J, H, W).
      decode: one of :data:`DECODERS`.
      blur_kernel: odd Gaussian kernel size for ``"dark"`` (the authors'
        ``TEST.BLUR_KERNEL``, 11 for heatmaps of sigma 2); checked always,
        used only by ``"dark"``.

    Returns:
      ``(coords, maxvals)``: (B, J, 2) float32 as (x, y) in heatmap pixels, and
      (B, J, 1) in the heatmaps' dtype.
    """
    check_heatmaps(heatmaps)
    decode = _check_decoder(decode)
    blur_kernel = _check_blur_kernel(blur_kernel)
    return _heatmap_coords(jnp.asarray(heatmaps), decode,
                           blur_kernel if decode == "dark" else 0)


def get_final_preds(
    heatmaps: ArrayLike, center: ArrayLike, scale: ArrayLike, post_process: bool = True,
    *, decode: str | None = None, blur_kernel: int = 11,
) -> tuple[jax.Array, jax.Array]:
    """Keypoints in original-image pixels from a batch of heatmaps.

    Each heatmap is decoded to a point in heatmap pixels by
    :func:`heatmap_coords` (``decode`` if given; otherwise ``"reference"``, the
    quarter-pixel shift, with ``post_process`` and ``"argmax"`` without), then
    mapped through the inverse of the crop transform of (center, scale,
    rotation 0, heatmap size).

    Args:
      heatmaps: (B, J, H, W).
      center: (B, 2) box centres (x, y) in image pixels.
      scale: (B, 2) box sizes in units of 200 px.
      post_process: apply the quarter-pixel refinement; ignored when
        ``decode`` is given.
      decode: one of :data:`DECODERS`, overriding ``post_process``.
      blur_kernel: odd Gaussian kernel size for ``decode="dark"``.

    Returns:
      ``(preds, maxvals)``: (B, J, 2) float32 (x, y) in image pixels and
      (B, J, 1) heatmap maxima. On concrete inputs the map back runs in
      float64 from the given ``center`` and ``scale`` and is rounded once to
      float32, as in the reference; under ``jax.jit`` it runs in float32.
    """
    b = check_heatmaps(heatmaps)[0]
    if decode is None:
        decode = "reference" if post_process else "argmax"
    decode = _check_decoder(decode)
    blur_kernel = _check_blur_kernel(blur_kernel)
    cs, ss = tuple(jnp.shape(center)), tuple(jnp.shape(scale))
    if cs != (b, 2):
        raise ValueError(f"center: expected shape (B, 2) = {(b, 2)} to go with heatmaps "
                         f"{tuple(jnp.shape(heatmaps))}, got {cs}")
    if ss != (b, 2):
        raise ValueError(f"scale: expected shape (B, 2) = {(b, 2)} to go with heatmaps "
                         f"{tuple(jnp.shape(heatmaps))}, got {ss}")
    h, w = jnp.shape(heatmaps)[2:]
    coords, maxvals = heatmap_coords(heatmaps, decode, blur_kernel=blur_kernel)
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


def flip_permutation(flip_pairs: FlipPairs, num_joints: int) -> tuple[int, ...]:
    """The joint order of mirrored heatmaps: each flip pair swapped, other joints kept.

    ``heatmaps[:, order]`` gives each joint its flip partner's map.

    Args:
      flip_pairs: pairs of joint indices that swap, e.g. ``MPII_FLIP_PAIRS``.
      num_joints: J.

    Returns:
      ``order``, a permutation of ``range(num_joints)`` as a tuple (hashable,
      so that it can be a static argument).

    Raises:
      ValueError: a pair names a joint outside ``range(num_joints)``.
    """
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
    return _flip_back(heatmaps_flipped, flip_permutation(flip_pairs, j))


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
    return _fuse_flip(output, output_flipped, flip_permutation(flip_pairs, shape[1]),
                      bool(shift))


def fuse_flip_by_order(output: ArrayLike, output_flipped: ArrayLike, order: tuple[int, ...],
                       shift: bool = True) -> jax.Array:
    """:func:`fuse_flip` given the joint order (:func:`flip_permutation`), without shape checks.

    For traced code whose two (B, J, H, W) outputs have the same shape by
    construction and whose shapes cannot be read while tracing: jax2onnx's
    conversion traces ``jnp.shape`` itself (see
    :func:`hrnet_jax.forward.predict_heatmaps`).
    """
    return _fuse_flip(output, output_flipped, tuple(order), bool(shift))
