"""Reference PyTorch state_dict <-> Flax variables."""

import dataclasses
import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax import convert
from hrnet_jax.config import StageConfig, get_config
from hrnet_jax.models import build_model
from hrnet_jax.models import variables as model_variables
from hrnet_jax.models.layers import conv2d

# The reference's own state_dict names and shapes, in order, recorded by
# golden/make_golden.py from its PoseHighResolutionNet (see golden/README.md).
REFERENCE_STATE_DICTS = pathlib.Path(__file__).resolve().parent / "golden" / "reference_state_dicts.json"

# (preset, network in REFERENCE_STATE_DICTS, input (height, width))
REFERENCE_NETWORKS = [
    ("hrnet_w32", "hrnet_w32_256x256_mpii", (256, 256)),
    ("hrnet_w48", "hrnet_w48_256x256_mpii", (256, 256)),
    ("hrnet_w32_coco", "hrnet_w32_256x192_coco", (256, 192)),
]


@functools.cache
def _reference_networks() -> dict:
    return json.loads(REFERENCE_STATE_DICTS.read_text())["networks"]


def _read_reference(network: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(shape)) for name, shape in _reference_networks()[network]["state_dict"]]


@functools.cache
def _abstract_variables(name: str, height: int, width: int):
    model = build_model(get_config(name))
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, height, width)), train=False))


def _shapes(tree):
    return jax.tree.map(lambda leaf: tuple(leaf.shape), dict(tree))


def _tiny_config():
    cfg = get_config("hrnet_w8")
    model = dataclasses.replace(
        cfg.model, image_size=(64, 64), heatmap_size=(16, 16),
        stage3=StageConfig(1, 3, (1, 1, 1), (8, 16, 32)),
        stage4=StageConfig(2, 4, (1, 1, 1, 1), (8, 16, 32, 64)),
    )
    return dataclasses.replace(cfg, model=model)


def _random_variables(cfg, seed=0):
    model = build_model(cfg)
    w, h = cfg.model.image_size
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, h, w)), train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), abstract)


@pytest.mark.parametrize(("name", "network", "size"), REFERENCE_NETWORKS)
def test_reference_layout_lists_every_reference_key_in_reference_order(name, network, size):
    reference = _read_reference(network)
    layout = [(e.name, e.shape) for e in convert.reference_layout(get_config(name))]
    assert layout == reference


@pytest.mark.parametrize(("name", "network", "size"), REFERENCE_NETWORKS)
def test_every_reference_key_maps_to_exactly_one_flax_leaf_of_the_right_shape(
        name, network, size):
    reference = _read_reference(network)
    cfg = get_config(name)
    state_dict = {k: np.zeros(shape, np.float32) for k, shape in reference}
    variables = convert.torch_state_dict_to_variables(state_dict, cfg)
    expected = _shapes(_abstract_variables(name, *size))
    # Same tree, same leaf shapes: no Flax leaf unfilled, none extra.
    assert _shapes(variables) == expected
    tensors = [k for k, _ in reference if not k.endswith("num_batches_tracked")]
    assert len(jax.tree.leaves(variables)) == len(tensors)
    # And back: the reverse direction names every reference key, num_batches_tracked included.
    back = convert.variables_to_torch_state_dict(variables, cfg)
    assert [(k, v.shape) for k, v in back.items()] == reference


@pytest.mark.parametrize(("name", "network", "size"), REFERENCE_NETWORKS)
def test_flax_parameters_number_as_many_as_the_reference_parameters(name, network, size):
    params = _abstract_variables(name, *size)["params"]
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    assert count == _reference_networks()[network]["parameters"]


def test_round_trip_flax_to_reference_names_and_back_is_exact():
    cfg = _tiny_config()
    variables = _random_variables(cfg)
    state_dict = convert.variables_to_torch_state_dict(variables, cfg)
    assert state_dict["bn1.num_batches_tracked"].dtype == np.int64
    assert state_dict["bn1.num_batches_tracked"].shape == ()
    assert int(state_dict["bn1.num_batches_tracked"]) == 0
    again = convert.torch_state_dict_to_variables(state_dict, cfg)
    jax.tree.map(np.testing.assert_array_equal, again, dict(variables))
    # The reverse of the reverse gives back the same reference arrays too.
    twice = convert.variables_to_torch_state_dict(again, cfg)
    assert list(twice) == list(state_dict)
    for key in state_dict:
        np.testing.assert_array_equal(twice[key], state_dict[key])


def test_batchnorm_entries_land_in_scale_bias_mean_var():
    cfg = _tiny_config()
    state_dict = convert.variables_to_torch_state_dict(_random_variables(cfg), cfg)
    state_dict["layer1.0.bn2.weight"] = np.arange(64, dtype=np.float32)
    state_dict["layer1.0.bn2.bias"] = np.arange(64, dtype=np.float32) + 100
    state_dict["layer1.0.bn2.running_mean"] = np.arange(64, dtype=np.float32) + 200
    state_dict["layer1.0.bn2.running_var"] = np.arange(64, dtype=np.float32) + 300
    state_dict["final_layer.bias"] = np.arange(16, dtype=np.float32) + 400
    variables = convert.torch_state_dict_to_variables(state_dict, cfg)
    np.testing.assert_array_equal(variables["params"]["layer1_0"]["bn2"]["scale"], np.arange(64))
    np.testing.assert_array_equal(variables["params"]["layer1_0"]["bn2"]["bias"],
                                  np.arange(64) + 100)
    np.testing.assert_array_equal(variables["batch_stats"]["layer1_0"]["bn2"]["mean"],
                                  np.arange(64) + 200)
    np.testing.assert_array_equal(variables["batch_stats"]["layer1_0"]["bn2"]["var"],
                                  np.arange(64) + 300)
    np.testing.assert_array_equal(variables["params"]["final_layer"]["bias"],
                                  np.arange(16) + 400)


def test_oihw_weights_become_hwio_kernels_that_compute_the_same_cross_correlation():
    cfg = _tiny_config()
    state_dict = convert.variables_to_torch_state_dict(_random_variables(cfg), cfg)
    weight = np.zeros((64, 3, 3, 3), np.float32)  # conv1: (O, I, kH, kW), stride 2, pad 1
    weight[5, 2, 0, 2] = 1.0  # out channel 5 reads in channel 2 one row up, one column right
    weight[7, 0, 2, 0] = 1.0  # out channel 7 reads in channel 0 one row down, one column left
    state_dict["conv1.weight"] = weight
    kernel = convert.torch_state_dict_to_variables(state_dict, cfg)["params"]["conv1"]["kernel"]
    assert kernel.shape == (3, 3, 3, 64)

    x = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype(np.float32)  # NHWC
    out = np.asarray(conv2d(64, 3, 2, "conv1").apply({"params": {"kernel": kernel}}, x))
    padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))  # padded[r + 1, c + 1] = x[r, c]
    for y in range(4):
        for xx in range(4):
            # Output (y, x) centres on input (2y, 2x): tap (ky, kx) reads row 2y - 1 + ky.
            assert out[0, y, xx, 5] == pytest.approx(padded[2 * y + 0, 2 * xx + 2, 2])
            assert out[0, y, xx, 7] == pytest.approx(padded[2 * y + 2, 2 * xx + 0, 0])
    assert np.count_nonzero(out[0, :, :, :5]) == 0


def test_strict_conversion_lists_all_missing_unexpected_and_mis_shaped_keys():
    cfg = _tiny_config()
    state_dict = dict(convert.variables_to_torch_state_dict(_random_variables(cfg), cfg))
    del state_dict["conv1.weight"]
    del state_dict["stage4.1.fuse_layers.0.3.1.running_var"]
    state_dict["classifier.weight"] = np.zeros((10, 4))
    state_dict["stage4.1.fuse_layers.1.0.0.0.weight"] = np.zeros((16, 8, 3, 3))
    state_dict["bn2.bias"] = np.zeros(63, np.float32)
    state_dict["final_layer.weight"] = np.zeros((17, 8, 1, 1), np.float32)
    with pytest.raises(ValueError) as info:
        convert.torch_state_dict_to_variables(state_dict, cfg)
    message = str(info.value)
    for key in ("conv1.weight", "stage4.1.fuse_layers.0.3.1.running_var", "classifier.weight",
                "stage4.1.fuse_layers.1.0.0.0.weight", "bn2.bias", "final_layer.weight"):
        assert key in message
    assert "2 missing, 2 unexpected, 2 mis-shaped" in message
    assert "expected (16, 8, 1, 1), got (17, 8, 1, 1)" in message


def test_num_batches_tracked_is_optional_as_in_older_checkpoints():
    cfg = _tiny_config()
    state_dict = convert.variables_to_torch_state_dict(_random_variables(cfg), cfg)
    without = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert len(without) < len(state_dict)
    convert.torch_state_dict_to_variables(without, cfg)


def test_non_strict_conversion_skips_unexpected_and_missing_keys_but_not_wrong_shapes():
    cfg = _tiny_config()
    state_dict = {"conv1.weight": np.ones((64, 3, 3, 3), np.float32), "head.fc.weight": np.ones(3)}
    variables = convert.torch_state_dict_to_variables(state_dict, cfg, strict=False)
    assert list(variables["params"]) == ["conv1"]
    assert variables["batch_stats"] == {}
    with pytest.raises(ValueError, match="conv1.weight: expected"):
        convert.torch_state_dict_to_variables({"conv1.weight": np.ones((64, 3, 1, 1))}, cfg,
                                              strict=False)


def test_reverse_conversion_lists_missing_and_unexpected_flax_variables():
    cfg = _tiny_config()
    variables = _random_variables(cfg)
    params = dict(variables["params"])
    del params["conv2"]
    params["extra_head"] = {"kernel": np.zeros((1, 1, 8, 2))}
    with pytest.raises(ValueError) as info:
        convert.variables_to_torch_state_dict(
            {"params": params, "batch_stats": variables["batch_stats"]}, cfg)
    assert "params/conv2/kernel" in str(info.value)
    assert "params/extra_head/kernel" in str(info.value)


def test_backbone_loading_takes_only_the_pretrained_layers():
    cfg = _tiny_config()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, pretrained_layers=("conv1", "bn1", "layer1", "stage2")))
    initial = _random_variables(cfg, seed=1)
    imagenet = dict(convert.variables_to_torch_state_dict(_random_variables(cfg, seed=2), cfg))
    # What an ImageNet HRNet has and the pose network lacks.
    imagenet["incre_modules.0.0.conv1.weight"] = np.zeros((32, 8, 1, 1))
    imagenet["stage2.0.fuse_layers.5.0.0.0.weight"] = np.zeros((1,))
    loaded, report = convert.load_pretrained_backbone(initial, imagenet, cfg)

    np.testing.assert_array_equal(loaded["params"]["conv1"]["kernel"],
                                  np.transpose(imagenet["conv1.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(loaded["batch_stats"]["bn1"]["var"],
                                  imagenet["bn1.running_var"])
    np.testing.assert_array_equal(loaded["params"]["stage2_0"]["branches_1_0"]["bn2"]["bias"],
                                  imagenet["stage2.0.branches.1.0.bn2.bias"])
    # Not listed: left at their initial values.
    for untouched in ("conv2", "bn2", "transition1_0_0", "stage3_0", "final_layer"):
        jax.tree.map(np.testing.assert_array_equal, loaded["params"][untouched],
                     initial["params"][untouched])
    assert "conv1.weight" in report["loaded"]
    assert "layer1.3.bn3.running_mean" in report["loaded"]
    assert "conv2.weight" in report["left_at_init"]
    assert "final_layer.bias" in report["left_at_init"]
    assert not set(report["loaded"]) & set(report["left_at_init"])
    assert all(k.split(".")[0] in ("conv1", "bn1", "layer1", "stage2") for k in report["loaded"])
    assert "incre_modules.0.0.conv1.weight" in report["ignored"]
    assert "stage2.0.fuse_layers.5.0.0.0.weight" in report["ignored"]
    assert "final_layer.weight" in report["ignored"]
    layout = [e.name for e in convert.reference_layout(cfg) if e.collection is not None]
    assert sorted(report["loaded"] + report["left_at_init"]) == sorted(layout)


def test_check_variables_lists_missing_unexpected_and_mis_shaped_variables_of_the_network():
    cfg = _tiny_config()
    variables = _random_variables(cfg)
    convert.check_variables(variables, cfg)
    params = dict(variables["params"])
    del params["conv2"]
    params["head"] = {"kernel": np.zeros((1, 1, 8, 2))}
    params["final_layer"] = {"kernel": np.zeros((1, 1, 8, 17)), "bias": np.zeros(16)}
    with pytest.raises(ValueError) as info:
        convert.check_variables({"params": params, "batch_stats": variables["batch_stats"]}, cfg)
    message = str(info.value)
    assert "1 missing, 1 unexpected, 1 mis-shaped" in message
    assert "params/conv2/kernel (3, 3, 64, 64)" in message
    assert "params/head/kernel" in message
    assert "params/final_layer/kernel: expected (1, 1, 8, 16), got (1, 1, 8, 17)" in message


def test_settings_that_change_no_variable_change_neither_the_layout_nor_the_check():
    cfg = _tiny_config()
    variables = _random_variables(cfg)
    layout = convert.reference_layout(cfg)
    for changes in ({"dtype": "bfloat16"}, {"scan": "all"}, {"scan": "blocks"},
                    {"image_size": (192, 256), "heatmap_size": (48, 64), "sigma": 3.0},
                    {"pretrained": "imagenet.pth", "pretrained_layers": ("*",)}):
        other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))
        assert convert.reference_layout(other) == layout
        convert.check_variables(variables, other)


def test_the_layout_follows_the_network_it_is_derived_from():
    cfg = _tiny_config()
    for changes, name, shape in [
        ({"num_joints": 17}, "final_layer.weight", (17, 8, 1, 1)),
        ({"final_conv_kernel": 3}, "final_layer.weight", (16, 8, 3, 3)),
        ({"stage1": StageConfig(1, 1, (1,), (16,), "BOTTLENECK")}, "transition1.0.0.weight",
         (8, 64, 3, 3)),
    ]:
        other = dataclasses.replace(cfg.model, **changes)
        assert {e.name: e.shape for e in convert.reference_layout(other)}[name] == shape
    # 16 BOTTLENECK planes give the stem's 64 channels back: no shortcut convolution.
    names = [e.name for e in convert.reference_layout(dataclasses.replace(
        cfg.model, stage1=StageConfig(1, 1, (1,), (16,), "BOTTLENECK")))]
    assert "layer1.0.downsample.0.weight" not in names


def test_checking_variables_on_every_model_load_traces_each_network_once(monkeypatch):
    built = []

    def counting_build_model(model_cfg):
        built.append(model_cfg)
        return build_model(model_cfg)

    monkeypatch.setattr(model_variables, "build_model", counting_build_model)
    cfg = _tiny_config()
    # A network no other spec asks for, so that no earlier call has traced it.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_joints=5))
    variables = _random_variables(cfg)
    for dtype, scan in (("float32", "none"), ("bfloat16", "all"), ("float32", "auto")):
        convert.check_variables(variables, dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, dtype=dtype, scan=scan)))
    convert.variables_to_torch_state_dict(variables, cfg)
    assert len(built) == 1


def test_flax_names_glue_indices_to_the_module_before_them():
    assert convert.flax_module_path("stage2.0.branches.0.1.conv1") == (
        "stage2_0", "branches_0_1", "conv1")
    assert convert.flax_module_path("transition2.2.0.0") == ("transition2_2_0_0",)
    assert convert.reference_module_name(("stage3_0", "fuse_layers_2_0_1_1")) == (
        "stage3.0.fuse_layers.2.0.1.1")
    assert convert.reference_module_name(("final_layer",)) == "final_layer"


def test_reading_a_pth_without_torch_says_how_to_install_it(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    path.write_bytes(b"\x80\x02")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match=r"model.pth.*pip install 'hrnet_jax\[torch\]'"):
        convert.read_torch_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        convert.read_torch_checkpoint(tmp_path / "absent.pth")
