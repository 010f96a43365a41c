"""The configuration's data types: a :class:`Config` is a tree of frozen dataclasses.

Sizes follow the reference convention: ``image_size`` and ``heatmap_size``
are ``(width, height)``.
"""

from __future__ import annotations

import dataclasses


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
    # The reference ImageNet HRNet .pth a new run starts its backbone from
    # (pretrained_layers), as the reference's MODEL.PRETRAINED; "" starts from
    # the random initialisation.
    pretrained: str = ""
    pretrained_layers: tuple[str, ...] = (
        "conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2",
        "transition2", "stage3", "transition3", "stage4",
    )
    dtype: str = "float32"  # compute dtype; parameters stay float32
    # Repeated blocks and modules run as one lax.scan each: "auto" ("blocks" on
    # the CPU, "none" on accelerators), "none", "blocks", "modules" or "all".
    # The variables and the results are the same either way.
    scan: str = "auto"


# ModelConfig's stages, in network order.
STAGES = ("stage1", "stage2", "stage3", "stage4")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    # A dataset of hrnet_jax.data.registry: "mpii", "synthetic" (MPII layout,
    # generated), "coco", "synthetic_coco" (COCO layout, generated), a
    # registered name or "package.module:DatasetClass".
    name: str = "mpii"
    root: str = "data/mpii"
    train_set: str = "train"
    test_set: str = "valid"
    # "jpg" (any image files under root/images); the reference's "zip" (images
    # inside zip archives) is refused with a message.
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
    end_epoch: int = 210
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_factor: float = 0.1
    lr_step: tuple[int, ...] = (170, 200)
    wd: float = 1e-4  # used by SGD only, as in the reference (its Adam has none)
    momentum: float = 0.9
    nesterov: bool = False
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
    # The flip test's images and mirrors as one batch of 2N in one network call
    # (fewer, larger kernels on a GPU) instead of two calls of N, as the
    # reference validates; the same maths, but XLA may round the other batch
    # size's convolutions differently in the last bits.
    join_mirrors: bool = False
    # The model scripts/test.py evaluates when --checkpoint is not given (the
    # reference's TEST.MODEL_FILE): any form --checkpoint takes, or a reference .pth.
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
