"""Shared test configurations: tiny HRNets that compile in seconds on a CPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import tempfile
from typing import Any

import pytest

# Many tests compile the same tiny steps, in this process and in the scripts they
# run; JAX's persistent compilation cache (inherited by subprocesses) compiles
# each once per session.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="hrnet_jax_test_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # noqa: E402  (after the cache settings above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hrnet_jax.config import Config, StageConfig, get_config, override
from hrnet_jax.models import build_model

# One single-block module per stage: every code path of the presets, a quick compile.
SHALLOW_OVERRIDES = (
    "model.stage2.num_blocks=1,1",
    "model.stage3.num_modules=1",
    "model.stage3.num_blocks=1,1,1",
    "model.stage4.num_modules=1",
    "model.stage4.num_blocks=1,1,1,1",
)
# HRNet-W8 made shallow on 64x64 inputs; also usable as command-line flags
# (--config hrnet_w8 --set KEY=VALUE ...).
TINY_OVERRIDES = (
    "model.image_size=64,64",
    "model.heatmap_size=16,16",
    "model.sigma=1.0",
    *SHALLOW_OVERRIDES,
)
SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> Any:
    """``scripts/<name>.py`` imported as a module, to call its ``main(argv)`` in this process."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(*extra: str) -> Config:
    """``hrnet_w8`` with :data:`TINY_OVERRIDES` and then ``extra`` applied."""
    return override(get_config("hrnet_w8"), [*TINY_OVERRIDES, *extra])


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()


def small_estimator_config(image_size=(64, 64)):
    """HRNet-W8 with one single-block module per stage (the channel widths of W8)."""
    cfg = get_config("hrnet_w8")
    model = dataclasses.replace(
        cfg.model, image_size=image_size, heatmap_size=(image_size[0] // 4, image_size[1] // 4),
        stage2=StageConfig(1, 2, (1, 1), (8, 16)),
        stage3=StageConfig(1, 3, (1, 1, 1), (8, 16, 32)),
        stage4=StageConfig(1, 4, (1, 1, 1, 1), (8, 16, 32, 64)),
    )
    return dataclasses.replace(cfg, model=model)


# A hand-set network whose heatmaps are colour channels of the crop: right joints
# read red, left joints green, the midline blue, so that where a colour lies in
# the image decides where each joint lands, and the flip test's mirroring, pair
# swapping and column shift each move a joint.
RED, GREEN, BLUE = 0, 1, 2
RIGHT_JOINTS = (0, 1, 2, 10, 11, 12)
LEFT_JOINTS = (3, 4, 5, 13, 14, 15)
MIDLINE_JOINTS = (6, 7, 8, 9)
CHANNEL_OF_JOINT = tuple(RED if j in RIGHT_JOINTS else GREEN if j in LEFT_JOINTS else BLUE
                         for j in range(16))
# Added to the normalised colours so that no ReLU clips them (they are > -2.2).
OFFSET = 3.0


def heat(value, channel):
    """Heatmap value of a pixel whose ``channel`` is ``value`` (0..255): ImageNet-normalised + OFFSET."""
    mean = (0.485, 0.456, 0.406)[channel]
    std = (0.229, 0.224, 0.225)[channel]
    return (value / 255 - mean) / std + OFFSET


def colour_reading_variables(cfg):
    """Variables for which heatmap j at (v, u) is crop pixel (4v, 4u), channel CHANNEL_OF_JOINT[j], + OFFSET.

    conv1 and conv2 (3x3, stride 2) copy the colour channels with their centre
    tap, so heatmap pixel (v, u) reads crop pixel (4v, 4u); bn1 adds OFFSET;
    every other BatchNorm is the identity (scale 1, bias 0, mean 0, variance
    1 - 1e-5, which epsilon 1e-5 makes 1); residual branches and the fuse terms
    from other branches have zero kernels, so every block and module passes
    branch 0 through; layer1's first shortcut and transition1 copy the colour
    channels; the final layer picks one channel per joint.
    """
    model = build_model(cfg)
    w, h = cfg.model.image_size
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, h, w)), train=False))

    def fill(path, leaf):
        name = path[-1].key
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name == "var":
            return np.full(leaf.shape, 1 - 1e-5, np.float32)
        return np.zeros(leaf.shape, np.float32)

    variables = jax.tree_util.tree_map_with_path(fill, abstract)
    params = variables["params"]
    for copier in (params["conv1"], params["conv2"], params["layer1_0"]["downsample_0"],
                   params["transition1_0_0"]):
        kernel = copier["kernel"]  # (kH, kW, in, out)
        centre = kernel.shape[0] // 2
        for c in (RED, GREEN, BLUE):
            kernel[centre, centre, c, c] = 1.0
    params["bn1"]["bias"][:3] = OFFSET
    for joint, channel in enumerate(CHANNEL_OF_JOINT):
        params["final_layer"]["kernel"][0, 0, channel, joint] = 1.0
    return variables
