"""The network's heatmaps of a batch, with or without the flip test.

One forward pass for evaluation (:func:`hrnet_jax.evaluation.make_eval_step`),
inference (:class:`hrnet_jax.inference.PoseEstimator`) and the exported files
(:mod:`hrnet_jax.export`): :func:`predict_heatmaps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax import lax

from hrnet_jax.decode import flip_permutation, fuse_flip_by_order

__all__ = ["predict_heatmaps"]


def predict_heatmaps(model: Any, variables: Any, images: jax.Array, *, flip_test: bool,
                     flip_pairs: Sequence[Sequence[int]] = (), shift: bool = True,
                     join_mirrors: bool = True) -> jax.Array:
    """Eval-mode heatmaps of ``images``, averaged with their mirror's under the flip test.

    With ``flip_test`` the network also sees the mirrored images; their
    heatmaps are mirrored back, paired joints swapped, shifted one column
    right when ``shift``, and averaged with the plain ones
    (:func:`hrnet_jax.decode.fuse_flip`). Traceable under ``jax.jit``,
    ``jax.pmap`` and jax2onnx's conversion (with a symbolic batch N).

    Args:
      model: the network, a Flax module applied as ``model.apply(variables,
        images, train=False)``.
      variables: ``{'params', 'batch_stats'}``.
      images: (N, 3, H, W) float32 normalised crops.
      flip_test: average with the mirrored images' heatmaps (the reference's
        ``TEST.FLIP_TEST``).
      flip_pairs: joint pairs that swap in the mirror (the dataset's).
      shift: the one-column shift (the reference's ``TEST.SHIFT_HEATMAP``).
      join_mirrors: run the images and their mirrors as one batch of 2N (one
        network call, one copy of the network in an exported graph: what
        inference and export do) rather than as two calls of N (the
        reference's validation, which evaluation follows). The maths is the
        same, but XLA may round another batch size's convolutions differently
        in the last bits.

    Returns:
      (N, J, H/4, W/4) heatmaps.
    """
    if not flip_test:
        return model.apply(variables, images, train=False)
    mirrored = images[..., ::-1]
    if join_mirrors:
        # lax's join and split, not jnp.concatenate and slicing: jax2onnx
        # converts these with a symbolic batch N.
        n = images.shape[0]
        both = model.apply(variables, lax.concatenate([images, mirrored], 0), train=False)
        output = lax.slice_in_dim(both, 0, n)
        output_flipped = lax.slice_in_dim(both, n, 2 * n)
    else:
        output = model.apply(variables, images, train=False)
        output_flipped = model.apply(variables, mirrored, train=False)
    order = flip_permutation(flip_pairs, output.shape[1])
    return fuse_flip_by_order(output, output_flipped, order, shift)
