"""Experiment configuration as plain, immutable data.

A :class:`Config` is a tree of frozen dataclasses (:mod:`.schema`). Presets
come from :func:`get_config` (:mod:`.presets`); the reference implementation's
YAML experiment files are read by :func:`load_yaml` (:mod:`.reference_yaml`);
single fields are overridden with :func:`override` (``"train.lr=5e-4"``,
:mod:`.overrides`) so every experiment stays data.

Sizes follow the reference convention: ``image_size`` and ``heatmap_size``
are ``(width, height)``.
"""

from __future__ import annotations

import os

from hrnet_jax.config.overrides import from_dict, override, parse_image_size, to_dict
from hrnet_jax.config.presets import preset, preset_names
from hrnet_jax.config.reference_yaml import load_yaml
from hrnet_jax.config.schema import (
    DECODERS,
    STAGES,
    Config,
    DatasetConfig,
    LossConfig,
    ModelConfig,
    StageConfig,
    TestConfig,
    TrainConfig,
)

__all__ = [
    "DECODERS", "STAGES", "Config", "DatasetConfig", "LossConfig", "ModelConfig", "StageConfig",
    "TestConfig", "TrainConfig", "from_dict", "get_config", "load_yaml", "override",
    "parse_image_size", "preset_names", "to_dict",
]


def get_config(name: str) -> Config:
    """Returns a preset by name, or reads a reference-format YAML file.

    ``hrnet_w{C}`` is HRNet with branch widths ``(C, 2C, 4C, 8C)`` on MPII
    (16 joints, 256x256 input, 64x64 heatmaps, sigma 2); ``hrnet_w{C}_coco``
    the same on COCO (17 joints, 192x256 input, 48x64 heatmaps). A path ending
    in ``.yaml``/``.yml`` is read with :func:`load_yaml`.
    """
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return load_yaml(name)
    cfg = preset(name)
    if cfg is not None:
        return cfg
    raise ValueError(
        f"unknown config {name!r}: expected one of {preset_names()}, any hrnet_w<C>, "
        "or a path to a reference-format .yaml experiment file"
    )
