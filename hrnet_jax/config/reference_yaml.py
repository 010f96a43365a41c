"""Reading the reference implementation's YAML experiment files into a :class:`Config`."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from hrnet_jax.config.overrides import override
from hrnet_jax.config.presets import coco, mpii
from hrnet_jax.config.schema import STAGES, Config, StageConfig

# (yaml section, yaml key) -> dotted Config field
_YAML_FIELDS = {
    ("", "WORKERS"): "workers",
    ("", "PRINT_FREQ"): "print_freq",
    ("MODEL", "NUM_JOINTS"): "model.num_joints",
    ("MODEL", "IMAGE_SIZE"): "model.image_size",
    ("MODEL", "HEATMAP_SIZE"): "model.heatmap_size",
    ("MODEL", "SIGMA"): "model.sigma",
    ("MODEL", "TARGET_TYPE"): "model.target_type",
    ("MODEL", "PRETRAINED"): "model.pretrained",  # unless INIT_WEIGHTS is false
    ("DATASET", "DATASET"): "dataset.name",
    ("DATASET", "ROOT"): "dataset.root",
    ("DATASET", "TRAIN_SET"): "dataset.train_set",
    ("DATASET", "TEST_SET"): "dataset.test_set",
    ("DATASET", "DATA_FORMAT"): "dataset.data_format",
    ("DATASET", "FLIP"): "dataset.flip",
    ("DATASET", "SCALE_FACTOR"): "dataset.scale_factor",
    ("DATASET", "ROT_FACTOR"): "dataset.rot_factor",
    ("DATASET", "PROB_HALF_BODY"): "dataset.prob_half_body",
    ("DATASET", "NUM_JOINTS_HALF_BODY"): "dataset.num_joints_half_body",
    ("DATASET", "COLOR_RGB"): "dataset.color_rgb",
    ("LOSS", "USE_TARGET_WEIGHT"): "loss.use_target_weight",
    ("LOSS", "USE_OHKM"): "loss.use_ohkm",
    ("LOSS", "TOPK"): "loss.topk",
    ("TRAIN", "BATCH_SIZE_PER_GPU"): "train.batch_size_per_device",
    ("TRAIN", "SHUFFLE"): "train.shuffle",
    ("TRAIN", "END_EPOCH"): "train.end_epoch",
    ("TRAIN", "OPTIMIZER"): "train.optimizer",
    ("TRAIN", "LR"): "train.lr",
    ("TRAIN", "LR_FACTOR"): "train.lr_factor",
    ("TRAIN", "LR_STEP"): "train.lr_step",
    ("TRAIN", "WD"): "train.wd",
    ("TRAIN", "MOMENTUM"): "train.momentum",
    ("TRAIN", "NESTEROV"): "train.nesterov",
    ("TEST", "BATCH_SIZE_PER_GPU"): "test.batch_size_per_device",
    ("TEST", "FLIP_TEST"): "test.flip_test",
    ("TEST", "POST_PROCESS"): "test.post_process",  # true: decode "reference", false: "argmax"
    ("TEST", "USE_GT_BBOX"): "test.use_gt_bbox",
    ("TEST", "COCO_BBOX_FILE"): "test.coco_bbox_file",
    ("TEST", "IMAGE_THRE"): "test.image_thre",
    ("TEST", "IN_VIS_THRE"): "test.in_vis_thre",
    ("TEST", "OKS_THRE"): "test.oks_thre",
    ("TEST", "SOFT_NMS"): "test.soft_nms",
    ("TEST", "BLUR_KERNEL"): "test.blur_kernel",  # DARK experiments (DarkPose)
    ("TEST", "SHIFT_HEATMAP"): "test.shift_heatmap",
    ("TEST", "MODEL_FILE"): "test.model_file",
    ("DEBUG", "DEBUG"): "debug",
}


def load_yaml(path: str) -> Config:
    """Reads an experiment file in the reference implementation's YAML format.

    Keys the JAX implementation has no use for (CUDNN, GPUS, OUTPUT_DIR, the
    COCO detection settings, TRAIN.GAMMA1/GAMMA2, which the reference never
    reads, ...) are accepted and ignored. ``TRAIN.BEGIN_EPOCH`` must be 0 (a
    run resumes from its work directory's checkpoints); with
    ``MODEL.INIT_WEIGHTS: false`` no pretrained backbone is loaded. The model must be
    ``pose_hrnet``; its stages come from ``MODEL.EXTRA.STAGE1..4`` (the
    reference's files have no STAGE1: its layer1 is the default ``model.stage1``).
    """
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path!r} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path!r}: expected a mapping at the top level")

    model = raw.get("MODEL", {}) or {}
    if model.get("NAME", "pose_hrnet") != "pose_hrnet":
        raise ValueError(f"config file {path!r}: MODEL.NAME {model['NAME']!r} is not supported "
                         "(only pose_hrnet)")
    dataset_name = str((raw.get("DATASET") or {}).get("DATASET", "mpii")).lower()
    cfg = coco(32) if dataset_name == "coco" else mpii(32)

    assignments: dict[str, Any] = {}
    for (section, key), field in _YAML_FIELDS.items():
        source = raw if section == "" else (raw.get(section) or {})
        if key in source:
            assignments[field] = source[key]
    train = raw.get("TRAIN") or {}
    if int(train.get("BEGIN_EPOCH", 0) or 0) != 0:
        raise ValueError(f"config file {path!r}: TRAIN.BEGIN_EPOCH {train['BEGIN_EPOCH']} is not "
                         "supported: a run starts at epoch 0 and resumes from the checkpoints of "
                         "its work directory")
    if model.get("INIT_WEIGHTS", True) is False:
        assignments["model.pretrained"] = ""
    cfg = override(cfg, assignments)

    extra = model.get("EXTRA") or {}
    stages = {}
    for field in STAGES:
        name = field.upper()
        if name not in extra:
            continue
        s = extra[name]
        try:
            stage = StageConfig(
                num_modules=int(s["NUM_MODULES"]),
                num_branches=int(s["NUM_BRANCHES"]),
                num_blocks=tuple(int(b) for b in s["NUM_BLOCKS"]),
                num_channels=tuple(int(c) for c in s["NUM_CHANNELS"]),
                block=str(s.get("BLOCK", getattr(cfg.model, field).block)),
                fuse_method=str(s.get("FUSE_METHOD", "SUM")),
            )
        except KeyError as e:
            raise ValueError(f"config file {path!r}: MODEL.EXTRA.{name} lacks key {e}") from None
        if len(stage.num_blocks) != stage.num_branches or len(stage.num_channels) != stage.num_branches:
            raise ValueError(f"config file {path!r}: MODEL.EXTRA.{name} has NUM_BRANCHES "
                             f"{stage.num_branches} but {len(stage.num_blocks)} NUM_BLOCKS and "
                             f"{len(stage.num_channels)} NUM_CHANNELS")
        stages[field] = stage
    model_cfg = dataclasses.replace(cfg.model, **stages)
    if "PRETRAINED_LAYERS" in extra:
        model_cfg = dataclasses.replace(model_cfg, pretrained_layers=tuple(extra["PRETRAINED_LAYERS"]))
    if "FINAL_CONV_KERNEL" in extra:
        model_cfg = dataclasses.replace(model_cfg, final_conv_kernel=int(extra["FINAL_CONV_KERNEL"]))
    return dataclasses.replace(cfg, model=model_cfg)
