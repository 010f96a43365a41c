"""Shared test configurations: tiny HRNets that compile in seconds on a CPU."""

from __future__ import annotations

import dataclasses

import pytest

from hrnet_jax.config import Config, StageConfig, get_config


def tiny_config(image: int = 64, **overrides) -> Config:
    """HRNet-W8 with one single-block module per stage, ``image`` x ``image`` input."""
    cfg = get_config("hrnet_w8")
    model = dataclasses.replace(
        cfg.model, image_size=(image, image), heatmap_size=(image // 4, image // 4), sigma=1.0,
        stage2=StageConfig(1, 2, (1, 1), (8, 16)),
        stage3=StageConfig(1, 3, (1, 1, 1), (8, 16, 32)),
        stage4=StageConfig(1, 4, (1, 1, 1, 1), (8, 16, 32, 64)),
    )
    return dataclasses.replace(cfg, model=model, **overrides)


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()
