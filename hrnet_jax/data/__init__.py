"""MPII data: the reader, the per-sample transform, the parallel loader and a synthetic MPII-format set.

Submodules load on first use, so worker processes import only what they need.
"""

from __future__ import annotations

from hrnet_jax._lazy import lazy_exports

_EXPORTS = {
    "MPIIDataset": "hrnet_jax.data.mpii",
    "BadImageError": "hrnet_jax.data.mpii",
    "convert_record": "hrnet_jax.data.mpii",
    "load_records": "hrnet_jax.data.mpii",
    "mpii_gt_path": "hrnet_jax.data.mpii",
    "make_sample": "hrnet_jax.data.sample",
    "build_loader": "hrnet_jax.data.loader",
    "Loader": "hrnet_jax.data.loader",
    "BatchPlan": "hrnet_jax.data.loader",
    "ensure_synthetic_mpii": "hrnet_jax.data.synthetic",
    "write_synthetic_mpii": "hrnet_jax.data.synthetic",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("hrnet_jax.data", _EXPORTS, globals())
