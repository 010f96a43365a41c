"""Experiment configuration as plain, immutable data.

A :class:`Config` is a tree of frozen dataclasses. Presets come from
:func:`get_config`; the reference implementation's YAML experiment files are
read by :func:`load_yaml`; single fields are overridden with
:func:`override` (``"train.lr=5e-4"``) so every experiment stays data.

Sizes follow the reference convention: ``image_size`` and ``heatmap_size``
are ``(width, height)``.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One HRNet stage: ``num_modules`` HighResolutionModules side by side."""

    num_modules: int
    num_branches: int
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]
    block: str = "BASIC"
    fuse_method: str = "SUM"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "pose_hrnet"
    num_joints: int = 16
    image_size: tuple[int, int] = (256, 256)  # (width, height)
    heatmap_size: tuple[int, int] = (64, 64)  # (width, height)
    sigma: float = 2.0
    target_type: str = "gaussian"
    # layer1 after the stem: one branch of residual blocks (the reference pose
    # network's fixed 4 BOTTLENECK blocks of 64 planes unless MODEL.EXTRA.STAGE1 says otherwise).
    stage1: StageConfig = StageConfig(1, 1, (4,), (64,), "BOTTLENECK")
    stage2: StageConfig = StageConfig(1, 2, (4, 4), (32, 64))
    stage3: StageConfig = StageConfig(4, 3, (4, 4, 4), (32, 64, 128))
    stage4: StageConfig = StageConfig(3, 4, (4, 4, 4, 4), (32, 64, 128, 256))
    final_conv_kernel: int = 1
    pretrained: str = ""
    pretrained_layers: tuple[str, ...] = (
        "conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2",
        "transition2", "stage3", "transition3", "stage4",
    )
    dtype: str = "float32"  # compute dtype; parameters stay float32
    # Repeated blocks and modules run as one lax.scan each: "auto" (on
    # accelerators, not on the CPU), "none", "blocks", "modules" or "all".
    # The variables and the results are the same either way.
    scan: str = "auto"


# ModelConfig's stages, in network order.
_STAGES = ("stage1", "stage2", "stage3", "stage4")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    # A dataset of hrnet_jax.data.registry: "mpii", "synthetic" (MPII layout,
    # generated), "coco", "synthetic_coco" (COCO layout, generated), a
    # registered name or "package.module:DatasetClass".
    name: str = "mpii"
    root: str = "data/mpii"
    train_set: str = "train"
    test_set: str = "valid"
    data_format: str = "jpg"
    flip: bool = True
    scale_factor: float = 0.25
    rot_factor: float = 30.0
    prob_half_body: float = -1.0
    num_joints_half_body: int = 8
    color_rgb: bool = True
    # The synthetic sets ("synthetic", "synthetic_coco"), generated once into root.
    synthetic_num_train: int = 4000
    synthetic_num_valid: int = 500
    synthetic_image_size: tuple[int, int] = (256, 256)  # (width, height)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    use_target_weight: bool = True
    use_ohkm: bool = False
    topk: int = 8


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size_per_device: int = 32
    shuffle: bool = True
    begin_epoch: int = 0
    end_epoch: int = 210
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_factor: float = 0.1
    lr_step: tuple[int, ...] = (170, 200)
    wd: float = 1e-4  # used by SGD only, as in the reference (its Adam has none)
    momentum: float = 0.9
    nesterov: bool = False
    gamma1: float = 0.99
    gamma2: float = 0.0
    sync_batch_stats: bool = False  # False: per-device BN statistics (DataParallel-like)
    eval_every_epochs: int = 1
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    keep_checkpoints: int = 3


# Heatmap -> coordinate decoders (hrnet_jax.decode.heatmap_coords).
DECODERS = ("argmax", "reference", "dark")


@dataclasses.dataclass(frozen=True)
class TestConfig:
    batch_size_per_device: int = 32
    flip_test: bool = True
    # Heatmap -> coordinates: "argmax", "reference" (the quarter-pixel shift; the
    # reference's POST_PROCESS true) or "dark" (distribution-aware refinement).
    decode: str = "reference"
    blur_kernel: int = 11  # DARK's Gaussian modulation kernel (11 suits sigma 2)
    shift_heatmap: bool = True
    model_file: str = ""
    # COCO-style evaluation (the reference's TEST section, values of its COCO experiments).
    use_gt_bbox: bool = True  # False: the detections of coco_bbox_file
    coco_bbox_file: str = ""  # relative: to the working directory, else to dataset.root
    image_thre: float = 0.0  # detections scoring below this are dropped
    in_vis_thre: float = 0.2  # joints scoring above this count in a person's score
    oks_thre: float = 0.9  # OKS NMS threshold
    soft_nms: bool = False

    def __post_init__(self) -> None:
        if self.decode not in DECODERS:
            raise ValueError(f"test.decode: expected one of {DECODERS}, got {self.decode!r}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"test.blur_kernel: expected an odd size >= 1, got {self.blur_kernel}")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    dataset: DatasetConfig = DatasetConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    test: TestConfig = TestConfig()
    workers: int = 4
    # Batches each data worker builds ahead of training, at most: the workers
    # then hold at most workers * prefetch finished batches.
    prefetch: int = 2
    print_freq: int = 100
    seed: int = 0
    debug: bool = False


def _widths(c: int, n: int) -> tuple[int, ...]:
    return tuple(c * 2**i for i in range(n))


def _hrnet_model(width: int, *, num_joints: int, image_size, heatmap_size) -> ModelConfig:
    return ModelConfig(
        num_joints=num_joints,
        image_size=image_size,
        heatmap_size=heatmap_size,
        stage2=StageConfig(1, 2, (4, 4), _widths(width, 2)),
        stage3=StageConfig(4, 3, (4, 4, 4), _widths(width, 3)),
        stage4=StageConfig(3, 4, (4, 4, 4, 4), _widths(width, 4)),
    )


def _mpii(width: int) -> Config:
    return Config(model=_hrnet_model(width, num_joints=16, image_size=(256, 256),
                                     heatmap_size=(64, 64)))


def _coco(width: int) -> Config:
    return Config(
        model=_hrnet_model(width, num_joints=17, image_size=(192, 256), heatmap_size=(48, 64)),
        dataset=DatasetConfig(name="coco", root="data/coco", train_set="train2017",
                              test_set="val2017", scale_factor=0.35, rot_factor=45.0,
                              prob_half_body=0.3, num_joints_half_body=8),
        train=TrainConfig(end_epoch=210, lr_step=(170, 200)),
        test=TestConfig(coco_bbox_file=os.path.join(
            "person_detection_results", "COCO_val2017_detections_AP_H_56_person.json")),
    )


def _quickstart() -> Config:
    """A small HRNet that learns the synthetic MPII-format set on a 2-core CPU in minutes."""
    base = _mpii(16)
    model = dataclasses.replace(
        base.model, image_size=(128, 128), heatmap_size=(32, 32), sigma=1.0,
        stage3=StageConfig(1, 3, (2, 2, 2), _widths(16, 3)),
        stage4=StageConfig(1, 4, (2, 2, 2, 2), _widths(16, 4)),
    )
    return dataclasses.replace(
        base, model=model,
        dataset=dataclasses.replace(base.dataset, name="synthetic", root="data/synthetic_mpii",
                                    synthetic_num_train=2000, synthetic_num_valid=300),
        train=dataclasses.replace(base.train, batch_size_per_device=16, end_epoch=4,
                                  lr_step=(3,)),
        test=dataclasses.replace(base.test, batch_size_per_device=32, blur_kernel=5),
        workers=0,
        print_freq=25,
    )


def _quickstart_coco() -> Config:
    """A small HRNet that learns the synthetic COCO-format set on a 2-core CPU in minutes."""
    base = _coco(16)
    model = dataclasses.replace(
        base.model, image_size=(96, 128), heatmap_size=(24, 32), sigma=1.0,
        stage3=StageConfig(1, 3, (2, 2, 2), _widths(16, 3)),
        stage4=StageConfig(1, 4, (2, 2, 2, 2), _widths(16, 4)),
    )
    return dataclasses.replace(
        base, model=model,
        dataset=dataclasses.replace(base.dataset, name="synthetic_coco",
                                    root="data/synthetic_coco", synthetic_num_train=1200,
                                    synthetic_num_valid=200, synthetic_image_size=(320, 256)),
        train=dataclasses.replace(base.train, batch_size_per_device=16, end_epoch=3,
                                  lr_step=(2,)),
        test=dataclasses.replace(base.test, batch_size_per_device=32, coco_bbox_file="",
                                 blur_kernel=5),
        workers=0,
        print_freq=25,
    )


_PRESETS = {
    "hrnet_w32_coco": lambda: _coco(32),
    "hrnet_w48_coco": lambda: _coco(48),
    "hrnet_quickstart": _quickstart,
    "hrnet_quickstart_coco": _quickstart_coco,
}
_WIDTH_PRESET = re.compile(r"^hrnet_w(\d+)(_coco)?$")


def preset_names() -> list[str]:
    """Named presets; any ``hrnet_w{C}`` or ``hrnet_w{C}_coco`` is also accepted."""
    return ["hrnet_w32", "hrnet_w48", *_PRESETS]


def get_config(name: str) -> Config:
    """Returns a preset by name, or reads a reference-format YAML file.

    ``hrnet_w{C}`` is HRNet with branch widths ``(C, 2C, 4C, 8C)`` on MPII
    (16 joints, 256x256 input, 64x64 heatmaps, sigma 2); ``hrnet_w{C}_coco``
    the same on COCO (17 joints, 192x256 input, 48x64 heatmaps). A path ending
    in ``.yaml``/``.yml`` is read with :func:`load_yaml`.
    """
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return load_yaml(name)
    if name in _PRESETS:
        return _PRESETS[name]()
    match = _WIDTH_PRESET.match(name)
    if match:
        width = int(match.group(1))
        if width <= 0:
            raise ValueError(f"config {name!r}: the width must be positive")
        return _coco(width) if match.group(2) else _mpii(width)
    raise ValueError(
        f"unknown config {name!r}: expected one of {preset_names()}, any hrnet_w<C>, "
        "or a path to a reference-format .yaml experiment file"
    )


def parse_image_size(size: int | str | Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` from ``256``, ``"256"``, ``"1280x720"`` (width x height) or a pair.

    Raises:
      ValueError: the text is not N or WIDTHxHEIGHT, or a side is not positive.
    """
    if isinstance(size, str):
        try:
            values = [int(p) for p in size.lower().split("x")]
        except ValueError:
            raise ValueError(f"image size {size!r}: expected N or WIDTHxHEIGHT") from None
    elif isinstance(size, numbers.Integral):
        values = [int(size)]
    else:
        values = [int(v) for v in size]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError(f"image size {size!r}: expected N or WIDTHxHEIGHT")
    width, height = values
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {size!r}: both sides must be positive")
    return width, height


# --------------------------------------------------------------------------- overrides


def _coerce(value: Any, like: Any, key: str) -> Any:
    if isinstance(like, bool):
        if isinstance(value, str):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{key}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(like, int) and not isinstance(like, bool):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if isinstance(like, float):
        return float(value)
    if isinstance(like, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        if like and not isinstance(like[0], StageConfig):
            return tuple(_coerce(v, like[0], key) for v in value)
        return tuple(value)
    if isinstance(like, str):
        return str(value)
    return value


def override(cfg: Config, assignments: Sequence[str] | Mapping[str, Any]) -> Config:
    """Returns ``cfg`` with dotted fields replaced, e.g. ``["train.lr=5e-4"]``.

    Values given as strings are parsed to the type of the field they replace;
    an unknown key raises ValueError naming it and the keys available.
    """
    items = (
        assignments.items()
        if isinstance(assignments, Mapping)
        else [_split_assignment(a) for a in assignments]
    )
    for key, value in items:
        if key == "test.post_process":
            # The reference's flag, kept as a spelling of test.decode.
            key = "test.decode"
            value = "reference" if _coerce(value, True, "test.post_process") else "argmax"
        cfg = _replace_path(cfg, key.split("."), value, key)
    return cfg


def _split_assignment(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key=value, e.g. train.lr=5e-4")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _replace_path(node: Any, path: list[str], value: Any, full_key: str) -> Any:
    names = [f.name for f in dataclasses.fields(node)]
    head = path[0]
    if head not in names:
        raise ValueError(f"unknown config key {full_key!r}: {head!r} is not one of {names}")
    current = getattr(node, head)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise ValueError(f"config key {full_key!r} names a section, not a value")
        new = _coerce(value, current, full_key)
    else:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"config key {full_key!r}: {head!r} is a value, not a section")
        new = _replace_path(current, path[1:], value, full_key)
    return dataclasses.replace(node, **{head: new})


def to_dict(cfg: Config) -> dict:
    """The configuration as nested plain dicts (for logs and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(data: Mapping[str, Any]) -> Config:
    """Inverse of :func:`to_dict`."""

    def build(cls, values):
        if cls is TestConfig and "post_process" in values and "decode" not in values:
            # Saved before test.decode replaced the reference's post_process flag.
            values = {**values, "decode": "reference" if values["post_process"] else "argmax"}
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            default = getattr(cls(), f.name) if f.name not in _STAGES else None
            if f.name in _STAGES:
                v = StageConfig(**{k: tuple(x) if isinstance(x, list) else x for k, x in v.items()})
            elif dataclasses.is_dataclass(default):
                v = build(type(default), v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
        return cls(**kwargs)

    return build(Config, data)


# --------------------------------------------------------------------------- reference YAML

# (yaml section, yaml key) -> dotted Config field
_YAML_FIELDS = {
    ("", "WORKERS"): "workers",
    ("", "PRINT_FREQ"): "print_freq",
    ("MODEL", "NUM_JOINTS"): "model.num_joints",
    ("MODEL", "IMAGE_SIZE"): "model.image_size",
    ("MODEL", "HEATMAP_SIZE"): "model.heatmap_size",
    ("MODEL", "SIGMA"): "model.sigma",
    ("MODEL", "TARGET_TYPE"): "model.target_type",
    ("MODEL", "PRETRAINED"): "model.pretrained",
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
    ("TRAIN", "BEGIN_EPOCH"): "train.begin_epoch",
    ("TRAIN", "END_EPOCH"): "train.end_epoch",
    ("TRAIN", "OPTIMIZER"): "train.optimizer",
    ("TRAIN", "LR"): "train.lr",
    ("TRAIN", "LR_FACTOR"): "train.lr_factor",
    ("TRAIN", "LR_STEP"): "train.lr_step",
    ("TRAIN", "WD"): "train.wd",
    ("TRAIN", "MOMENTUM"): "train.momentum",
    ("TRAIN", "NESTEROV"): "train.nesterov",
    ("TRAIN", "GAMMA1"): "train.gamma1",
    ("TRAIN", "GAMMA2"): "train.gamma2",
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
    COCO detection settings, ...) are accepted and ignored. The model must be
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
    cfg = _coco(32) if dataset_name == "coco" else _mpii(32)

    assignments: dict[str, Any] = {}
    for (section, key), field in _YAML_FIELDS.items():
        source = raw if section == "" else (raw.get(section) or {})
        if key in source:
            assignments[field] = source[key]
    cfg = override(cfg, assignments)

    extra = model.get("EXTRA") or {}
    stages = {}
    for field in _STAGES:
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
