"""HRNet for top-down human pose estimation in JAX/Flax.

The numerical core (targets, losses, metrics, decoding) is importable from the
package root; submodules load on first use, so ``import hrnet_jax`` is cheap
and data-loading worker processes never pay for what they do not touch.
"""

from __future__ import annotations

from hrnet_jax._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "get_config": "hrnet_jax.config",
    "build_model": "hrnet_jax.models",
    "generate_target": "hrnet_jax.targets",
    "generate_targets": "hrnet_jax.targets",
    "joints_mse_loss": "hrnet_jax.losses",
    "joints_ohkm_mse_loss": "hrnet_jax.losses",
    "get_max_preds": "hrnet_jax.decode",
    "pck_accuracy": "hrnet_jax.metrics",
    "pckh": "hrnet_jax.metrics",
    "mpii_evaluate": "hrnet_jax.metrics",
    "oks_nms": "hrnet_jax.metrics",
    "soft_oks_nms": "hrnet_jax.metrics",
    "rescore_by_keypoints": "hrnet_jax.metrics",
    "coco_evaluate": "hrnet_jax.metrics",
    "heatmap_coords": "hrnet_jax.decode",
    "get_final_preds": "hrnet_jax.decode",
    "flip_back": "hrnet_jax.decode",
    "fuse_flip": "hrnet_jax.decode",
    "get_affine_transform": "hrnet_jax.transforms",
    "affine_transform": "hrnet_jax.transforms",
    "PoseEstimator": "hrnet_jax.inference",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("hrnet_jax", _EXPORTS, globals())
