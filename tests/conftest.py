"""Shared test configurations: tiny HRNets that compile in seconds on a CPU."""

from __future__ import annotations

import os
import tempfile

import pytest

# Many tests compile the same tiny steps, in this process and in the scripts they
# run; JAX's persistent compilation cache (inherited by subprocesses) compiles
# each once per session.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="hrnet_jax_test_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

from hrnet_jax.config import Config, get_config, override

# HRNet-W8 with one single-block module per stage on 64x64 inputs; also usable
# as command-line flags (--config hrnet_w8 --set KEY=VALUE ...).
TINY_OVERRIDES = (
    "model.image_size=64,64",
    "model.heatmap_size=16,16",
    "model.sigma=1.0",
    "model.stage2.num_blocks=1,1",
    "model.stage3.num_modules=1",
    "model.stage3.num_blocks=1,1,1",
    "model.stage4.num_modules=1",
    "model.stage4.num_blocks=1,1,1,1",
)


def tiny_config(*extra: str) -> Config:
    """``hrnet_w8`` with :data:`TINY_OVERRIDES` and then ``extra`` applied."""
    return override(get_config("hrnet_w8"), [*TINY_OVERRIDES, *extra])


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()
