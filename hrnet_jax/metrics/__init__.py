"""Metrics: PCK (:mod:`.heatmaps`), MPII PCKh (:mod:`.mpii`), COCO keypoint OKS, NMS and
AP (:mod:`.coco`), and the printed tables (:mod:`.tables`). The heatmap argmax the
metrics use is decoding (:func:`hrnet_jax.decode.get_max_preds`), re-exported here.

Every public name is importable from ``hrnet_jax.metrics``.
"""

from __future__ import annotations

from hrnet_jax._lazy import lazy_exports
from hrnet_jax.decode import check_heatmaps, get_max_preds
from hrnet_jax.metrics.heatmaps import pck_accuracy
from hrnet_jax.metrics.mpii import (
    MPII_DATASET_JOINTS,
    PCKH_THRESHOLDS,
    TRUE_MEAN_AT_0_1_KEY,
    mpii_evaluate,
    pckh,
)
from hrnet_jax.metrics.tables import format_pckh_table, format_table

# COCO evaluation needs pycocotools: loaded on first use.
_EXPORTS = {
    "COCO_SIGMAS": "hrnet_jax.metrics.coco",
    "COCO_STATS_NAMES": "hrnet_jax.metrics.coco",
    "oks_iou": "hrnet_jax.metrics.coco",
    "oks_nms": "hrnet_jax.metrics.coco",
    "soft_oks_nms": "hrnet_jax.metrics.coco",
    "rescore_by_keypoints": "hrnet_jax.metrics.coco",
    "coco_evaluate": "hrnet_jax.metrics.coco",
}

__all__ = [
    "MPII_DATASET_JOINTS", "PCKH_THRESHOLDS", "TRUE_MEAN_AT_0_1_KEY", "check_heatmaps",
    "format_pckh_table", "format_table", "get_max_preds", "mpii_evaluate", "pck_accuracy",
    "pckh", "COCO_SIGMAS", "COCO_STATS_NAMES", "oks_iou", "oks_nms", "soft_oks_nms",
    "rescore_by_keypoints", "coco_evaluate",
]

__getattr__, __dir__ = lazy_exports("hrnet_jax.metrics", _EXPORTS, globals())
