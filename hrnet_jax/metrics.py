"""Heatmap argmax decoding, PCK accuracy during training, PCKh and the MPII table.

:func:`get_max_preds`, :func:`pck_accuracy` and :func:`pckh` are jitted and work
inside other jitted code. Called on concrete arrays, :func:`pckh` computes in
float64 on the host instead, so that errors exactly at the threshold count as
in the reference, and :func:`pck_accuracy` forms its fractions and their mean
from the jitted counts in float64, as the reference does. :func:`mpii_evaluate`
reads MPII's ground truth on the host and computes in float64 with NumPy, as
the reference does, so that its table matches published numbers to the last
digit; it shares its formula with :func:`pckh`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.io

ArrayLike = Any

# Joint names as stored in MPII's gt_valid.mat (``dataset_joints``).
MPII_DATASET_JOINTS: tuple[str, ...] = (
    "rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor",
    "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri",
)
# The table's columns: name -> dataset joint names averaged (left and right).
_TABLE_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Head", ("head",)),
    ("Shoulder", ("lsho", "rsho")),
    ("Elbow", ("lelb", "relb")),
    ("Wrist", ("lwri", "rwri")),
    ("Hip", ("lhip", "rhip")),
    ("Knee", ("lkne", "rkne")),
    ("Ankle", ("lank", "rank")),
)
# The reference leaves pelvis and thorax (by position) out of the means.
_EXCLUDED_FROM_MEAN = (6, 7)
# The reference's curve of thresholds, 0.00, 0.01, ..., 0.50 (float64, as built there).
PCKH_THRESHOLDS: np.ndarray = np.arange(0, 0.5 + 0.01, 0.01)
# The reference labels PCKH_THRESHOLDS[11] (= 0.11) "Mean@0.1"; index 10 is 0.1.
_REFERENCE_AT_0_1 = 11
_TRUE_AT_0_1 = 10
TRUE_MEAN_AT_0_1_KEY = "Mean@0.1(true)"


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


# --------------------------------------------------------------------------- PCK


@jax.jit
def _pck_counts(output, target, thr):
    """Per joint: samples within ``thr`` and samples counted, (J,) int32 each; and the preds."""
    _, _, h, w = output.shape
    pred, _ = _max_preds(output)
    gt, _ = _max_preds(target)
    # The reference normalises x by h / 10 and y by w / 10 (sic).
    norm = jnp.array([h, w], jnp.float32) / 10
    counted = (gt[..., 0] > 1) & (gt[..., 1] > 1)  # (B, J)
    dists = jnp.linalg.norm((pred - gt) / norm, axis=-1)
    hits = jnp.sum(counted & (dists < thr), axis=0, dtype=jnp.int32)
    num_counted = jnp.sum(counted, axis=0, dtype=jnp.int32)
    return hits, num_counted, pred


def _pck_summary(xp: ModuleType, hits, num_counted, dtype):
    """(acc (J + 1,), avg_acc, cnt) from per-joint counts, computed in ``dtype``."""
    per_joint = xp.where(num_counted > 0, hits.astype(dtype) / xp.maximum(num_counted, 1),
                         dtype(-1.0)).astype(dtype)
    has = num_counted > 0
    cnt = xp.sum(has)
    # The reference adds the joints' accuracies one after another: a running sum.
    total = xp.cumsum(xp.where(has, per_joint, dtype(0.0)))[-1]
    avg_acc = xp.where(cnt > 0, total / xp.maximum(cnt, 1), dtype(0.0)).astype(dtype)
    acc = xp.concatenate([avg_acc[None], per_joint]).astype(dtype)
    return acc, avg_acc, cnt


def pck_accuracy(
    output: ArrayLike, target: ArrayLike, thr: float = 0.5
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """PCK between the argmaxes of predicted and target heatmaps (the reference's ``accuracy``).

    Predicted and "ground-truth" points are :func:`get_max_preds` of ``output``
    and ``target``. Distances are normalised by ``(H / 10, W / 10)`` for
    ``(x, y)``: the reference pairs the height with x, and so do we. A (sample,
    joint) is counted only where the target point has x > 1 and y > 1.

    ``thr`` is honoured here; the reference's ``accuracy`` accepts a ``thr``
    but never passes it on, so it always measures at 0.5. The two agree at the
    default.

    Distances and counts are computed jitted; called on concrete arrays, the
    per-joint fractions and their mean are then formed in float64 (the
    reference's arithmetic) and rounded once to float32. Inside ``jax.jit`` they
    are formed in float32 (the mean within about 2e-7 relative).

    Args:
      output: (B, J, H, W) predicted heatmaps.
      target: (B, J, H, W) target heatmaps.
      thr: normalised distance below which a prediction is correct.

    Returns:
      ``(acc, avg_acc, cnt, pred)``: ``acc`` (J + 1,) float32 with ``acc[1 + j]``
      the fraction of counted samples of joint j within ``thr`` (-1 if none is
      counted) and ``acc[0] = avg_acc``, the mean over joints with ``acc >= 0``
      (0 if there are none); ``cnt`` the int32 number of such joints; ``pred``
      (B, J, 2) the predicted (x, y) in heatmap pixels.
    """
    shape = check_heatmaps(output, "output")
    target_shape = tuple(jnp.shape(target))
    if target_shape != shape:
        raise ValueError(f"target: expected the output's shape (B, J, H, W) = {shape}, "
                         f"got {target_shape}")
    hits, num_counted, pred = _pck_counts(output, target, thr)
    try:
        hits, num_counted = np.asarray(hits), np.asarray(num_counted)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        acc, avg_acc, cnt = _pck_summary(jnp, hits, num_counted, jnp.float32)
        return acc, avg_acc, cnt.astype(jnp.int32), pred
    # Concrete inputs: the fractions and their mean in float64 as the reference,
    # rounded once to float32 (a float32 running mean can be 2 ulps off).
    acc, avg_acc, cnt = _pck_summary(np, hits, num_counted, np.float64)
    return (jnp.asarray(acc, jnp.float32), jnp.asarray(avg_acc, jnp.float32),
            jnp.asarray(cnt, jnp.int32), pred)


# --------------------------------------------------------------------------- PCKh


def _scaled_errors(xp: ModuleType, pred, gt, headboxes, visible, sc_bias):
    """Distances in head sizes, zeroed where not visible: (N, J). Inputs as :func:`pckh`."""
    diff = pred - gt
    err = xp.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)  # (N, J)
    box = headboxes[:, 1, :] - headboxes[:, 0, :]
    headsize = xp.sqrt(box[:, 0] ** 2 + box[:, 1] ** 2) * sc_bias  # (N,)
    return err / headsize[:, None] * visible


def _pckh_at(xp: ModuleType, scaled, visible, threshold):
    """PCKh in percent at one threshold: (J,)."""
    correct = (scaled <= threshold) * visible
    # 0 / 0 (a joint never visible) gives NaN, as in the reference.
    return 100.0 * xp.sum(correct, axis=0) / xp.sum(visible, axis=0)


def _pckh_curve_np(scaled: np.ndarray, visible: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """PCKh in percent at each of the ascending ``thresholds``: (T, J), exact float64 counts.

    ``scaled <= thresholds[r]`` exactly when the first threshold not below
    ``scaled`` has index <= r, so one histogram of those indices, accumulated,
    gives every row without comparing each record with each threshold.
    """
    num_t, num_j = len(thresholds), scaled.shape[1]
    first = np.searchsorted(thresholds, scaled, side="left")  # NaN sorts last: never counted
    bins = first * num_j + np.arange(num_j)
    hist = np.bincount(bins.ravel(), weights=visible.ravel(), minlength=(num_t + 1) * num_j)
    correct = np.cumsum(hist.reshape(num_t + 1, num_j), axis=0)[:num_t]
    return 100.0 * correct / np.sum(visible, axis=0)


@jax.jit
def _pckh(pred, gt, headboxes, visible, threshold, sc_bias):
    visible = visible.astype(jnp.float32)
    scaled = _scaled_errors(jnp, pred.astype(jnp.float32), gt.astype(jnp.float32),
                            headboxes.astype(jnp.float32), visible, sc_bias)
    return _pckh_at(jnp, scaled, visible, threshold)


def _check_pckh_inputs(pred, gt, headboxes, visible, np_like=jnp) -> None:
    ps, gs = tuple(np_like.shape(pred)), tuple(np_like.shape(gt))
    hs, vs = tuple(np_like.shape(headboxes)), tuple(np_like.shape(visible))
    if len(ps) != 3 or ps[-1] != 2:
        raise ValueError(f"pred: expected shape (N, J, 2) as (x, y), got {ps}")
    if gs != ps:
        raise ValueError(f"gt: expected the shape of pred (N, J, 2) = {ps}, got {gs}")
    if hs != (ps[0], 2, 2):
        raise ValueError(f"headboxes: expected shape (N, 2, 2) = {(ps[0], 2, 2)} as "
                         f"((x1, y1), (x2, y2)) per record, got {hs}")
    if vs != ps[:2]:
        raise ValueError(f"visible: expected shape (N, J) = {ps[:2]}, got {vs}")


def pckh(
    pred: ArrayLike,
    gt: ArrayLike,
    headboxes: ArrayLike,
    visible: ArrayLike,
    threshold: float = 0.5,
    sc_bias: float = 0.6,
) -> jax.Array:
    """Per-joint PCKh: percent of visible joints within ``threshold`` head sizes.

    ``headsize = sc_bias * ||headbox[1] - headbox[0]||``; joint j of record n is
    correct when visible and ``||pred - gt|| / headsize <= threshold``. The
    percentage is over visible records; a joint never visible gives NaN (0 / 0)
    as in the reference. ``pred`` and ``gt`` must use the same pixel
    convention (:func:`mpii_evaluate` adds the reference's +1 itself).

    Args:
      pred: (N, J, 2) predicted (x, y).
      gt: (N, J, 2) ground-truth (x, y).
      headboxes: (N, 2, 2) head boxes as ((x1, y1), (x2, y2)).
      visible: (N, J) 1 where the joint is annotated, else 0.
      threshold: fraction of the head size.
      sc_bias: head-size factor (0.6 for MPII).

    Returns:
      (J,) float32 percentages.
    """
    _check_pckh_inputs(pred, gt, headboxes, visible)
    concrete = _as_float64(pred, gt, headboxes, visible, threshold, sc_bias)
    if concrete is None:
        return _pckh(pred, gt, headboxes, visible, threshold, sc_bias)
    # Outside a trace the inputs are computed on in float64, as the reference
    # does: an error of exactly ``threshold`` head sizes (0.66 px against a
    # head size of 6 at 0.11, say) then counts as it does there, where float32
    # rounding could tip it either way.
    pred64, gt64, boxes64, visible64, threshold64, sc_bias64 = concrete
    scaled = _scaled_errors(np, pred64, gt64, boxes64, visible64, sc_bias64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return jnp.asarray(_pckh_at(np, scaled, visible64, threshold64), jnp.float32)


def _as_float64(*values: Any) -> list[np.ndarray] | None:
    """The values as float64 NumPy arrays, or None if any is being traced by JAX."""
    try:
        return [np.asarray(v, dtype=np.float64) for v in values]
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


# --------------------------------------------------------------------------- MPII table


def _joint_names(dataset_joints: Any) -> list[str]:
    names = []
    for entry in np.asarray(dataset_joints, dtype=object).ravel():
        while isinstance(entry, np.ndarray):
            entry = entry.ravel()[0] if entry.size else ""
        names.append(str(entry))
    return names


def _load_gt(gt: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(gt, (str, os.PathLike)):
        path = os.fspath(gt)
        if not os.path.exists(path):
            raise FileNotFoundError(f"MPII ground truth {path!r} does not exist "
                                    "(expected annot/gt_valid.mat)")
        return scipy.io.loadmat(path), path
    if isinstance(gt, Mapping):
        return gt, "the ground-truth dict"
    raise TypeError(f"gt: expected a path to gt_valid.mat or its loadmat dict, got {type(gt)}")


def mpii_evaluate(
    preds: ArrayLike, gt: str | os.PathLike | Mapping[str, Any]
) -> collections.OrderedDict[str, Any]:
    """The MPII PCKh table, as the reference's ``MPIIDataset.evaluate``.

    Predictions are 0-based pixels; 1 is added (in the predictions' dtype) before
    comparing with MPII's 1-based annotations. Computed in float64 with NumPy.

    Args:
      preds: (N, 16, 2) or (N, 16, 3) predictions (x, y[, score]) in
        original-image pixels, one row per record of the ground truth.
      gt: path to ``gt_valid.mat`` or the dict ``scipy.io.loadmat`` returns, with
        ``dataset_joints`` (16 names), ``jnt_missing`` (16, N), ``pos_gt_src``
        (16, 2, N) and ``headboxes_src`` (2, 2, N).

    Returns:
      OrderedDict of floats ``Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle``
      (PCKh@0.5, left and right averaged), ``Mean`` (PCKh@0.5 over all joints but
      pelvis and thorax, weighted by their visible counts), ``Mean@0.1`` (the
      same mean at threshold **0.11**: the reference reads index 11 of its
      0.00..0.50 curve; kept under its published name so numbers compare with
      published tables), then extras: ``Mean@0.1(true)`` (the same mean at
      threshold 0.1), ``PCKh thresholds`` (51,) = 0.00, 0.01, ..., 0.50,
      ``PCKh curve`` (51,) the mean at each threshold, and ``PCKh per joint``
      (16,) PCKh@0.5 per joint in dataset order.
    """
    data, source = _load_gt(gt)
    missing = [k for k in ("dataset_joints", "jnt_missing", "pos_gt_src", "headboxes_src")
               if k not in data]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing}; expected dataset_joints, "
                         "jnt_missing (16, N), pos_gt_src (16, 2, N), headboxes_src (2, 2, N)")
    jnt_missing = np.asarray(data["jnt_missing"], dtype=np.float64)
    pos_gt = np.asarray(data["pos_gt_src"], dtype=np.float64)
    headboxes = np.asarray(data["headboxes_src"], dtype=np.float64)
    if jnt_missing.ndim != 2 or jnt_missing.shape[0] != 16:
        raise ValueError(f"{source}: jnt_missing: expected shape (16, N), got {jnt_missing.shape}")
    n = jnt_missing.shape[1]
    if pos_gt.shape != (16, 2, n):
        raise ValueError(f"{source}: pos_gt_src: expected shape (16, 2, N) = {(16, 2, n)}, "
                         f"got {pos_gt.shape}")
    if headboxes.shape != (2, 2, n):
        raise ValueError(f"{source}: headboxes_src: expected shape (2, 2, N) = {(2, 2, n)}, "
                         f"got {headboxes.shape}")
    names = _joint_names(data["dataset_joints"])
    if sorted(names) != sorted(MPII_DATASET_JOINTS):
        raise ValueError(f"{source}: dataset_joints: expected the 16 MPII names "
                         f"{list(MPII_DATASET_JOINTS)} (any order), got {names}")

    preds = np.asarray(preds)
    if not np.issubdtype(preds.dtype, np.floating):
        preds = preds.astype(np.float64)
    if preds.ndim != 3 or preds.shape[1] != 16 or preds.shape[2] not in (2, 3):
        raise ValueError(f"preds: expected shape (N, 16, 2) or (N, 16, 3), got {preds.shape}")
    if preds.shape[0] != n:
        raise ValueError(f"preds: {preds.shape[0]} records, but {source} has N = {n}")

    # MPII annotations are 1-based. The 1 is added in the predictions' own
    # precision (float32 from a validation run) before anything is float64,
    # as the reference does.
    pred = (preds[:, :, 0:2] + preds.dtype.type(1.0)).astype(np.float64)
    visible = 1 - jnt_missing.T  # (N, 16)
    gt_xy = np.transpose(pos_gt, (2, 0, 1))
    boxes = np.transpose(headboxes, (2, 0, 1))
    scaled = _scaled_errors(np, pred, gt_xy, boxes, visible, 0.6)
    at_half = _pckh_at(np, scaled, visible, 0.5)
    curve = _pckh_curve_np(scaled, visible, PCKH_THRESHOLDS)  # (51, 16)

    count = np.sum(visible, axis=0)
    kept = np.ones(16, bool)
    kept[list(_EXCLUDED_FROM_MEAN)] = False
    ratio = count / np.sum(np.where(kept, count, 0.0))

    def mean(per_joint: np.ndarray) -> float:
        return float(np.sum(np.where(kept, per_joint * ratio, 0.0)))

    index = {name: i for i, name in enumerate(names)}
    results: collections.OrderedDict[str, Any] = collections.OrderedDict()
    for column, parts in _TABLE_PARTS:
        if len(parts) == 1:
            results[column] = float(at_half[index[parts[0]]])
        else:
            results[column] = float(0.5 * (at_half[index[parts[0]]] + at_half[index[parts[1]]]))
    results["Mean"] = mean(at_half)
    results["Mean@0.1"] = mean(curve[_REFERENCE_AT_0_1])
    results[TRUE_MEAN_AT_0_1_KEY] = mean(curve[_TRUE_AT_0_1])
    results["PCKh thresholds"] = PCKH_THRESHOLDS.copy()
    results["PCKh curve"] = np.array([mean(row) for row in curve])
    results["PCKh per joint"] = at_half
    return results


def format_pckh_table(results: Mapping[str, Any], arch: str = "pose_hrnet") -> str:
    """The table as the reference logs it: a header row, a rule, a row of values.

    Only scalar entries are printed (the curve and per-joint extras of
    :func:`mpii_evaluate` are skipped); values with 3 decimals. Architecture
    names longer than 15 characters are shortened as in the reference.

    Example::

      | Arch | Head | Shoulder | ... | Mean | Mean@0.1 | Mean@0.1(true) |
      |---|---|---|...|---|
      | pose_hrnet | 97.101 | 95.941 | ... | 90.330 | 38.110 | 33.012 |
    """
    scalars = [(k, v) for k, v in results.items() if np.ndim(v) == 0]
    if len(arch) > 15:
        arch = arch[:8] + "..."
    header = "| Arch " + " ".join(f"| {name}" for name, _ in scalars) + " |"
    rule = "|---" * (len(scalars) + 1) + "|"
    row = "| " + arch + " " + " ".join(f"| {float(v):.3f}" for _, v in scalars) + " |"
    return "\n".join([header, rule, row])
