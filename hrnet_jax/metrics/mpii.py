"""MPII PCKh: the jitted :func:`pckh` and the reference's table, :func:`mpii_evaluate`.

Called on concrete arrays, :func:`pckh` computes in float64 on the host, so that
errors exactly at the threshold count as in the reference. :func:`mpii_evaluate`
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
