"""Keypoint datasets chosen by name (MPII, COCO and generated sets of each layout),
the per-sample transform and the parallel loader.

Submodules load on first use, so worker processes import only what they need.
"""

from __future__ import annotations

from hrnet_jax._lazy import lazy_exports

_EXPORTS = {
    "JointsDataset": "hrnet_jax.data.base",
    "Keypoints": "hrnet_jax.data.keypoints",
    "dataset_class": "hrnet_jax.data.registry",
    "dataset_names": "hrnet_jax.data.registry",
    "dataset_keypoints": "hrnet_jax.data.registry",
    "register_dataset": "hrnet_jax.data.registry",
    "build_dataset": "hrnet_jax.data.registry",
    "prepare_dataset": "hrnet_jax.data.registry",
    "MPIIDataset": "hrnet_jax.data.mpii",
    "MPII_KEYPOINTS": "hrnet_jax.data.mpii",
    "BadImageError": "hrnet_jax.images",
    "COCODataset": "hrnet_jax.data.coco",
    "COCO_KEYPOINTS": "hrnet_jax.data.coco",
    "convert_record": "hrnet_jax.data.mpii",
    "load_records": "hrnet_jax.data.mpii",
    "mpii_gt_path": "hrnet_jax.data.mpii",
    "make_sample": "hrnet_jax.data.sample",
    "build_loader": "hrnet_jax.data.loader",
    "Loader": "hrnet_jax.data.loader",
    "BatchPlan": "hrnet_jax.data.loader",
    "ensure_synthetic_mpii": "hrnet_jax.data.synthetic",
    "write_synthetic_mpii": "hrnet_jax.data.synthetic",
    "SyntheticMPIIDataset": "hrnet_jax.data.synthetic",
    "ensure_synthetic_coco": "hrnet_jax.data.synthetic_coco",
    "write_synthetic_coco": "hrnet_jax.data.synthetic_coco",
    "SyntheticCOCODataset": "hrnet_jax.data.synthetic_coco",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("hrnet_jax.data", _EXPORTS, globals())
