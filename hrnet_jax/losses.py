"""Heatmap regression losses: JointsMSE and its online hard keypoint mining variant.

Both weight predicted and target heatmaps by ``target_weight`` (so an invisible
or off-map joint contributes nothing) and halve the squared error, as the
reference does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

ArrayLike = Any


def _check(output: ArrayLike, target: ArrayLike, target_weight: ArrayLike) -> None:
    out_s, tgt_s, w_s = jnp.shape(output), jnp.shape(target), jnp.shape(target_weight)
    if len(out_s) != 4:
        raise ValueError(f"output: expected heatmaps of shape (B, J, H, W), got {out_s}")
    if tgt_s != out_s:
        raise ValueError(f"target: expected the output's shape (B, J, H, W) = {out_s}, got {tgt_s}")
    expected_w = out_s[:2] + (1,)
    if w_s != expected_w:
        hint = ""
        if len(w_s) == 3 and w_s[0] == out_s[0] and w_s[1] == out_s[3]:
            hint = " (are the heatmaps channels-last (B, H, W, J)? expected (B, J, H, W))"
        raise ValueError(
            f"target_weight: expected shape (B, J, 1) = {expected_w} for heatmaps "
            f"(B, J, H, W) = {out_s}, got {w_s}{hint}"
        )


def _per_joint_loss(output, target, target_weight, use_target_weight):
    """0.5 * mean squared error per (sample, joint): (B, J)."""
    output = output.astype(jnp.float32)
    target = target.astype(jnp.float32)
    if use_target_weight:
        weight = target_weight.astype(jnp.float32)[..., None]  # (B, J, 1, 1)
        output = output * weight
        target = target * weight
    return 0.5 * jnp.mean(jnp.square(output - target), axis=(2, 3))


@functools.partial(jax.jit, static_argnames=("use_target_weight",))
def _mse(output, target, target_weight, use_target_weight):
    per_joint = _per_joint_loss(output, target, target_weight, use_target_weight)
    # The reference sums 0.5 * MSE over joints (each a mean over batch and
    # pixels), then divides by the number of joints.
    return jnp.sum(jnp.mean(per_joint, axis=0)) / per_joint.shape[1]


@functools.partial(jax.jit, static_argnames=("use_target_weight", "topk"))
def _ohkm(output, target, target_weight, use_target_weight, topk):
    per_joint = _per_joint_loss(output, target, target_weight, use_target_weight)
    hardest, _ = jax.lax.top_k(per_joint, topk)
    return jnp.mean(jnp.sum(hardest, axis=1) / topk)


def joints_mse_loss(
    output: ArrayLike, target: ArrayLike, target_weight: ArrayLike, use_target_weight: bool = True
) -> jax.Array:
    """Weighted heatmap MSE, averaged over joints.

    ``loss = (1 / J) * sum_j 0.5 * mean_{b, pixels} (w_bj * output_bj - w_bj * target_bj)^2``,
    with ``w = 1`` when ``use_target_weight`` is false.

    Args:
      output: (B, J, H, W) predicted heatmaps.
      target: (B, J, H, W) target heatmaps.
      target_weight: (B, J, 1) per-joint weights.
      use_target_weight: whether to weight by ``target_weight``.

    Returns:
      Scalar float32 loss.
    """
    _check(output, target, target_weight)
    return _mse(output, target, target_weight, bool(use_target_weight))


def joints_ohkm_mse_loss(
    output: ArrayLike,
    target: ArrayLike,
    target_weight: ArrayLike,
    use_target_weight: bool = True,
    topk: int = 8,
) -> jax.Array:
    """Online hard keypoint mining MSE: only each sample's ``topk`` worst joints count.

    Per sample, each joint's loss is ``0.5 * mean_pixels (w * output - w * target)^2``;
    the ``topk`` largest are summed and divided by ``topk``; the result is
    averaged over the batch.

    Args:
      output: (B, J, H, W) predicted heatmaps.
      target: (B, J, H, W) target heatmaps.
      target_weight: (B, J, 1) per-joint weights.
      use_target_weight: whether to weight by ``target_weight``.
      topk: number of hardest joints kept per sample, 1 <= topk <= J.

    Returns:
      Scalar float32 loss.
    """
    _check(output, target, target_weight)
    num_joints = jnp.shape(output)[1]
    if not 1 <= int(topk) <= num_joints:
        raise ValueError(f"topk: expected 1 <= topk <= J = {num_joints}, got {topk}")
    return _ohkm(output, target, target_weight, bool(use_target_weight), int(topk))


def loss_from_config(cfg: Any) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """The heatmap loss of a :class:`~hrnet_jax.config.Config`: :func:`joints_mse_loss`, or
    :func:`joints_ohkm_mse_loss` with ``loss.use_ohkm`` (``loss.topk``), weighted by
    ``loss.use_target_weight``: ``criterion(output, target, target_weight) -> scalar``."""
    use_weight = bool(cfg.loss.use_target_weight)
    if cfg.loss.use_ohkm:
        topk = int(cfg.loss.topk)
        return lambda out, tgt, w: joints_ohkm_mse_loss(out, tgt, w, use_weight, topk=topk)
    return lambda out, tgt, w: joints_mse_loss(out, tgt, w, use_weight)
