"""Compiling the steps for a GPU target without a GPU (hrnet_jax.deviceless)."""

from __future__ import annotations

import importlib.util

import jax
import numpy as np
import pytest

from conftest import SHALLOW_OVERRIDES, load_script
from hrnet_jax import deviceless
from hrnet_jax.benchmark import benchmark_config
from hrnet_jax.train.state import create_train_state, init_variables

HAS_CUDA_PLUGIN = any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") is not None
                      for v in (12, 13)) if importlib.util.find_spec("jax_plugins") else False


def _tiny_config():
    return benchmark_config("hrnet_w8", batch_size=2, dtype="bfloat16", image_size=(64, 64),
                            overrides=SHALLOW_OVERRIDES)


def test_each_target_describes_a_hopper_gpu_with_its_own_memory():
    h100, h200 = deviceless.target_config("h100"), deviceless.target_config("h200")
    for text in (h100, h200):
        assert "core_count: 132" in text
        assert "cuda_compute_capability {\n    major: 9\n    minor: 0\n  }" in text
        assert text.count("{") == text.count("}")
    assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in h100
    assert "device_memory_size: 84942979072" in h100
    assert "memory_bandwidth: 4800000000000" in h200


def test_an_unknown_target_or_step_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown GPU target 'a100'.*h100, h200"):
        deviceless.target_config("a100")
    with pytest.raises(ValueError, match="unknown step 'predict'"):
        deviceless.step_arguments(_tiny_config(), "predict", 2)
    with pytest.raises(ValueError, match="unknown step 'predict'"):
        deviceless.step_body(_tiny_config(), "predict")


def test_a_missing_cuda_plugin_is_an_error_that_says_what_to_install(monkeypatch):
    from jax.experimental import topologies

    def no_plugin(**kwargs):
        raise RuntimeError("Unknown backend cuda")

    monkeypatch.setattr(topologies, "get_topology_desc", no_plugin)
    with pytest.raises(RuntimeError, match=r"jax-cuda13-pjrt==.*jax-cuda13-plugin==.*"
                                           r"JAX_PLATFORMS=cpu"):
        deviceless.gpu_topology("h100")


def test_abstract_arguments_have_the_shapes_of_the_real_ones():
    cfg = _tiny_config()
    variables = init_variables(cfg, jax.random.key(0))
    state = create_train_state(cfg, variables, steps_per_epoch=1)

    def shapes(tree):
        return jax.tree.map(lambda x: (np.shape(x), np.dtype(x.dtype)), tree)

    train = deviceless.step_arguments(cfg, "train", 2)
    for field in ("params", "batch_stats", "opt_state"):
        assert shapes(getattr(train[0], field)) == shapes(getattr(state, field)), field
    assert [a.shape for a in train[1:4]] == [(2, 3, 64, 64), (2, 16, 16, 16), (2, 16, 1)]
    evaluation = deviceless.step_arguments(cfg, "eval+flip", 2)
    assert shapes(evaluation[0]) == shapes(variables)
    assert [a.shape for a in evaluation[4:]] == [(2, 2), (2, 2), (2,)]


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="JAX's CUDA plugin is not installed")
def test_a_tiny_train_step_compiles_for_an_h100_into_cudnn_convolutions():
    cfg = _tiny_config()
    program = deviceless.compile_step(cfg, "train", 2, target="h100")
    # The forward convolutions and both gradients of each run as cuDNN calls.
    assert program.census.count("custom-call:__cudnn$convForward") > 0
    assert program.census.count("custom-call:__cudnn$convBackwardFilter") > 0
    assert program.census.count("custom-call:__cudnn$convBackwardInput") > 0
    assert program.census.operations > program.convolutions > 0
    assert program.temp_bytes > 0


def test_the_census_script_names_a_bad_step_or_target_before_compiling(capsys):
    script = load_script("gpu_census")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--steps", "train,predict"])
    assert exit_info.value.code == 2
    assert "unknown step 'predict'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--target", "a100"])
    assert "unknown GPU target 'a100'" in capsys.readouterr().err
