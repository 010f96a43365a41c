"""The PCK accuracy printed during training.

:func:`pck_accuracy` is jitted and works inside other jitted code. Called on
concrete arrays, it forms its fractions and their mean from the jitted counts
in float64, as the reference does. Its points are the heatmap argmax of
:func:`hrnet_jax.decode.get_max_preds`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.decode import check_heatmaps, get_max_preds

ArrayLike = Any


# --------------------------------------------------------------------------- PCK


@jax.jit
def _pck_counts(output, target, thr):
    """Per joint: samples within ``thr`` and samples counted, (J,) int32 each; and the preds."""
    _, _, h, w = output.shape
    pred, _ = get_max_preds(output)
    gt, _ = get_max_preds(target)
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

