"""The named experiments: HRNet-W{C} on MPII and COCO, and the small quickstart sets.

``hrnet_w{C}`` is HRNet with branch widths ``(C, 2C, 4C, 8C)`` on MPII (16
joints, 256x256 input, 64x64 heatmaps, sigma 2); ``hrnet_w{C}_coco`` the same
on COCO (17 joints, 192x256 input, 48x64 heatmaps), with the reference's
augmentation and schedule.
"""

from __future__ import annotations

import dataclasses
import os
import re

from hrnet_jax.config.schema import Config, DatasetConfig, ModelConfig, StageConfig, TestConfig, TrainConfig


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


def mpii(width: int) -> Config:
    """HRNet-W{width} on MPII, as the reference's ``w{width}_256x256`` experiments."""
    return Config(model=_hrnet_model(width, num_joints=16, image_size=(256, 256),
                                     heatmap_size=(64, 64)))


def coco(width: int) -> Config:
    """HRNet-W{width} on COCO, as the reference's ``w{width}_256x192`` experiments."""
    return Config(
        model=_hrnet_model(width, num_joints=17, image_size=(192, 256), heatmap_size=(48, 64)),
        dataset=DatasetConfig(name="coco", root="data/coco", train_set="train2017",
                              test_set="val2017", scale_factor=0.35, rot_factor=45.0,
                              prob_half_body=0.3, num_joints_half_body=8),
        train=TrainConfig(end_epoch=210, lr_step=(170, 200)),
        test=TestConfig(coco_bbox_file=os.path.join(
            "person_detection_results", "COCO_val2017_detections_AP_H_56_person.json")),
    )


def _quickstart(base: Config, *, image_size: tuple[int, int], heatmap_size: tuple[int, int],
                dataset: DatasetConfig, end_epoch: int, **test: object) -> Config:
    """``base`` shrunk to learn a generated set on a 2-core CPU in minutes: one module of
    two blocks per branch in stages 3 and 4, sigma 1, batch 16, no worker processes."""
    width = base.model.stage2.num_channels[0]
    model = dataclasses.replace(
        base.model, image_size=image_size, heatmap_size=heatmap_size, sigma=1.0,
        stage3=StageConfig(1, 3, (2, 2, 2), _widths(width, 3)),
        stage4=StageConfig(1, 4, (2, 2, 2, 2), _widths(width, 4)),
    )
    return dataclasses.replace(
        base, model=model, dataset=dataset,
        train=dataclasses.replace(base.train, batch_size_per_device=16, end_epoch=end_epoch,
                                  lr_step=(end_epoch - 1,)),
        test=dataclasses.replace(base.test, batch_size_per_device=32, blur_kernel=5, **test),
        workers=0,
        print_freq=25,
    )


def _quickstart_mpii() -> Config:
    base = mpii(16)
    return _quickstart(
        base, image_size=(128, 128), heatmap_size=(32, 32), end_epoch=4,
        dataset=dataclasses.replace(base.dataset, name="synthetic", root="data/synthetic_mpii",
                                    synthetic_num_train=2000, synthetic_num_valid=300))


def _quickstart_coco() -> Config:
    base = coco(16)
    return _quickstart(
        base, image_size=(96, 128), heatmap_size=(24, 32), end_epoch=3, coco_bbox_file="",
        dataset=dataclasses.replace(base.dataset, name="synthetic_coco",
                                    root="data/synthetic_coco", synthetic_num_train=1200,
                                    synthetic_num_valid=200, synthetic_image_size=(320, 256)))


_PRESETS = {
    "hrnet_w32_coco": lambda: coco(32),
    "hrnet_w48_coco": lambda: coco(48),
    "hrnet_quickstart": _quickstart_mpii,
    "hrnet_quickstart_coco": _quickstart_coco,
}
_WIDTH_PRESET = re.compile(r"^hrnet_w(\d+)(_coco)?$")


def preset_names() -> list[str]:
    """Named presets; any ``hrnet_w{C}`` or ``hrnet_w{C}_coco`` is also accepted."""
    return ["hrnet_w32", "hrnet_w48", *_PRESETS]


def preset(name: str) -> Config | None:
    """The preset called ``name``, or None when there is none."""
    if name in _PRESETS:
        return _PRESETS[name]()
    match = _WIDTH_PRESET.match(name)
    if not match:
        return None
    width = int(match.group(1))
    if width <= 0:
        raise ValueError(f"config {name!r}: the width must be positive")
    return coco(width) if match.group(2) else mpii(width)
