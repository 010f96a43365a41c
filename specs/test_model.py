"""The HRNet model: shapes, parameter counts, layer1, initialisation, padding, upsampling, dtypes,
scanning."""

import dataclasses
import functools
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax import convert
from hrnet_jax.config import StageConfig, get_config, load_yaml
from hrnet_jax.models import HRNet, build_model
from hrnet_jax.models.layers import BatchNorm, batch_moments, conv2d, upsample_nearest
from hrnet_jax.models.scan import SCAN_MODES


@functools.cache
def _abstract_variables(name: str, height: int, width: int):
    model = build_model(get_config(name))
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, height, width)), train=False))


def _param_count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _tiny_config(dtype: str = "float32"):
    """hrnet_w8 with one module of one block per branch: every code path, little compile time."""
    cfg = get_config("hrnet_w8")
    model = dataclasses.replace(
        cfg.model, image_size=(64, 64), heatmap_size=(16, 16), dtype=dtype,
        stage2=StageConfig(1, 2, (1, 1), (8, 16)),
        stage3=StageConfig(1, 3, (1, 1, 1), (8, 16, 32)),
        stage4=StageConfig(1, 4, (1, 1, 1, 1), (8, 16, 32, 64)),
    )
    return dataclasses.replace(cfg, model=model)


def _random_variables(abstract, seed: int = 0):
    """Variables with He-scaled kernels and non-trivial BatchNorm statistics."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return rng.normal(0, 0.1, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def tiny_initialised():
    cfg = _tiny_config()
    model = build_model(cfg)
    # The 'rbg' generator only to compile faster; the initialisers are what is checked.
    variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, 3, 64, 64)), train=False))(
        jax.random.key(0, impl="rbg"))
    return cfg, model, variables


# --------------------------------------------------------------------------- shapes


def test_w32_maps_48x3x256x256_to_48x16x64x64():
    model = build_model(get_config("hrnet_w32"))
    variables = _abstract_variables("hrnet_w32", 256, 256)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                         jax.ShapeDtypeStruct((48, 3, 256, 256), jnp.float32))
    chex.assert_shape(out, (48, 16, 64, 64))
    assert out.dtype == jnp.float32


def test_coco_w32_maps_256x192_inputs_to_17_joints_of_64x48():
    model = build_model(get_config("hrnet_w32_coco"))
    variables = _abstract_variables("hrnet_w32_coco", 256, 192)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                         jax.ShapeDtypeStruct((48, 3, 256, 192), jnp.float32))
    chex.assert_shape(out, (48, 17, 64, 48))


@pytest.mark.parametrize(
    ("name", "height", "width", "count"),
    [
        ("hrnet_w32", 256, 256, 28_536_080),
        ("hrnet_w48", 256, 256, 63_595_696),
        ("hrnet_w32_coco", 256, 192, 28_536_113),
    ],
)
def test_parameter_count_equals_the_reference(name, height, width, count):
    variables = _abstract_variables(name, height, width)
    assert set(variables) == {"params", "batch_stats"}
    assert _param_count(variables["params"]) == count


def test_parameters_are_float32_and_the_output_float32_when_computing_in_bfloat16():
    cfg = get_config("hrnet_w32")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="bfloat16"))
    model = build_model(cfg)
    x = jax.ShapeDtypeStruct((2, 3, 256, 256), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out.dtype == jnp.float32


def test_nhwc_input_is_rejected_with_the_expected_nchw_shape_named():
    model = build_model(get_config("hrnet_w32"))
    variables = _abstract_variables("hrnet_w32", 256, 256)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(4, 256, 256, 3\)"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                       jax.ShapeDtypeStruct((4, 256, 256, 3), jnp.float32))


def test_input_without_batch_axis_is_rejected():
    model = build_model(get_config("hrnet_w32"))
    variables = _abstract_variables("hrnet_w32", 256, 256)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                       jax.ShapeDtypeStruct((3, 256, 256), jnp.float32))


def test_input_sides_not_multiple_of_32_are_rejected():
    model = build_model(get_config("hrnet_w32"))
    variables = _abstract_variables("hrnet_w32", 256, 256)
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                       jax.ShapeDtypeStruct((1, 3, 250, 256), jnp.float32))


def test_unknown_compute_dtype_is_rejected_naming_the_key():
    cfg = get_config("hrnet_w8")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="float16"))
    with pytest.raises(ValueError, match="model.dtype"):
        build_model(cfg)


def test_variable_paths_follow_reference_module_names():
    params = _abstract_variables("hrnet_w32", 256, 256)["params"]
    stats = _abstract_variables("hrnet_w32", 256, 256)["batch_stats"]
    # stage2.0.branches.0.1.conv1.weight: (32, 32, 3, 3) in the reference.
    chex.assert_shape(params["stage2_0"]["branches_0_1"]["conv1"]["kernel"], (3, 3, 32, 32))
    # stage3.0.fuse_layers.2.0.1.0.weight: the second stride-2 conv from branch 0 to 2.
    chex.assert_shape(params["stage3_0"]["fuse_layers_2_0_1_0"]["kernel"], (3, 3, 32, 128))
    # transition3.3.0.0.weight: the new fourth branch from the third.
    chex.assert_shape(params["transition3_3_0_0"]["kernel"], (3, 3, 128, 256))
    chex.assert_shape(stats["layer1_0"]["downsample_1"]["var"], (256,))
    chex.assert_shape(params["final_layer"]["bias"], (16,))
    # The last module of stage 4 fuses into the highest resolution only.
    assert not any(k.startswith("fuse_layers_1") for k in params["stage4_2"])
    assert any(k.startswith("fuse_layers_1") for k in params["stage4_1"])


# --------------------------------------------------------------------------- stage 1 (layer1)

# HRNet-W18-small-v2 on MPII in the reference's experiment-file layout. The HRNet
# family's small models set layer1 through MODEL.EXTRA.STAGE1 (2 BOTTLENECK
# blocks of 64 planes); the pose network's own files have no STAGE1.
W18_SMALL_V2_MPII_YAML = textwrap.dedent("""\
    CUDNN:
      BENCHMARK: true
      DETERMINISTIC: false
      ENABLED: true
    GPUS: (0,1,2,3)
    OUTPUT_DIR: 'output'
    LOG_DIR: 'log'
    WORKERS: 24
    PRINT_FREQ: 100
    DATASET:
      COLOR_RGB: true
      DATASET: mpii
      DATA_FORMAT: jpg
      FLIP: true
      NUM_JOINTS_HALF_BODY: 8
      PROB_HALF_BODY: -1.0
      ROOT: 'data/mpii/'
      ROT_FACTOR: 30
      SCALE_FACTOR: 0.25
      TEST_SET: valid
      TRAIN_SET: train
    MODEL:
      INIT_WEIGHTS: true
      NAME: pose_hrnet
      NUM_JOINTS: 16
      PRETRAINED: 'models/pytorch/imagenet/hrnet_w18_small_model_v2.pth'
      TARGET_TYPE: gaussian
      IMAGE_SIZE: [256, 256]
      HEATMAP_SIZE: [64, 64]
      SIGMA: 2
      EXTRA:
        PRETRAINED_LAYERS: ['conv1', 'bn1', 'conv2', 'bn2', 'layer1', 'transition1', 'stage2',
                            'transition2', 'stage3', 'transition3', 'stage4']
        FINAL_CONV_KERNEL: 1
        STAGE1:
          NUM_MODULES: 1
          NUM_BRANCHES: 1
          BLOCK: BOTTLENECK
          NUM_BLOCKS: [2]
          NUM_CHANNELS: [64]
          FUSE_METHOD: SUM
        STAGE2:
          NUM_MODULES: 1
          NUM_BRANCHES: 2
          BLOCK: BASIC
          NUM_BLOCKS: [2, 2]
          NUM_CHANNELS: [18, 36]
          FUSE_METHOD: SUM
        STAGE3:
          NUM_MODULES: 3
          NUM_BRANCHES: 3
          BLOCK: BASIC
          NUM_BLOCKS: [2, 2, 2]
          NUM_CHANNELS: [18, 36, 72]
          FUSE_METHOD: SUM
        STAGE4:
          NUM_MODULES: 2
          NUM_BRANCHES: 4
          BLOCK: BASIC
          NUM_BLOCKS: [2, 2, 2, 2]
          NUM_CHANNELS: [18, 36, 72, 144]
          FUSE_METHOD: SUM
    LOSS:
      USE_TARGET_WEIGHT: true
    TRAIN:
      BATCH_SIZE_PER_GPU: 32
      END_EPOCH: 210
      OPTIMIZER: adam
      LR: 0.001
      LR_STEP: [170, 200]
    TEST:
      BATCH_SIZE_PER_GPU: 32
      FLIP_TEST: true
      POST_PROCESS: true
      SHIFT_HEATMAP: true
    """)


@pytest.fixture(scope="module")
def w18_small_v2(tmp_path_factory):
    path = tmp_path_factory.mktemp("w18_small_v2") / "w18_small_v2_256x256_adam_lr1e-3.yaml"
    path.write_text(W18_SMALL_V2_MPII_YAML)
    cfg = load_yaml(str(path))
    model = build_model(cfg)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 256, 256)), train=False))
    return cfg, model, variables


def test_w18_small_v2_yaml_builds_a_network_of_16_heatmaps_of_64x64_from_256x256_images(
        w18_small_v2):
    cfg, model, variables = w18_small_v2
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                         jax.ShapeDtypeStruct((1, 3, 256, 256), jnp.float32))
    chex.assert_shape(out, (1, 16, 64, 64))
    # Counted on the reference's PoseHighResolutionNet with layer1 made of 2 blocks.
    assert _param_count(variables["params"]) == 3_616_656


def test_w18_small_v2_layer1_is_exactly_two_bottleneck_blocks_of_64_planes(w18_small_v2):
    cfg, _, _ = w18_small_v2
    layout = {e.name: e.shape for e in convert.reference_layout(cfg)}
    blocks = {".".join(name.split(".")[:2]) for name in layout if name.startswith("layer1.")}
    assert blocks == {"layer1.0", "layer1.1"}
    assert not any(name.startswith("layer1.2") for name in layout)
    # The first block widens the stem's 64 channels to 64 * 4 through its shortcut...
    assert layout["layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert layout["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    # ...the second takes 256 and keeps them, with an identity shortcut.
    assert layout["layer1.1.conv1.weight"] == (64, 256, 1, 1)
    assert layout["layer1.1.conv3.weight"] == (256, 64, 1, 1)
    assert "layer1.1.downsample.0.weight" not in layout


def test_w18_small_v2_transition1_convolutions_take_layer1s_256_channels(w18_small_v2):
    cfg, _, _ = w18_small_v2
    layout = {e.name: e.shape for e in convert.reference_layout(cfg)}
    transition1 = {k: v for k, v in layout.items()
                   if k.startswith("transition1.") and k.endswith("0.weight")}
    # Branch 0: 3x3 from 256 to 18; branch 1: 3x3 stride 2 from 256 to 36.
    assert transition1 == {"transition1.0.0.weight": (18, 256, 3, 3),
                           "transition1.1.0.0.weight": (36, 256, 3, 3)}


def test_w18_small_v2_state_dict_round_trips_through_the_reference_names(w18_small_v2):
    cfg, _, abstract = w18_small_v2
    variables = _random_variables(abstract, seed=3)
    state_dict = convert.variables_to_torch_state_dict(variables, cfg)
    names = list(state_dict)
    # PyTorch order: the stem, layer1's two blocks, then transition1.
    last_of_layer1 = names.index("layer1.1.bn3.num_batches_tracked")
    assert names[last_of_layer1 + 1] == "transition1.0.0.weight"
    assert names[:2] == ["conv1.weight", "bn1.weight"]
    again = convert.torch_state_dict_to_variables(state_dict, cfg)
    chex.assert_trees_all_equal(again, jax.device_get(variables))


def test_the_default_configuration_keeps_the_reference_layer1_of_four_blocks():
    params = _abstract_variables("hrnet_w32", 256, 256)["params"]
    assert sorted(k for k in params if k.startswith("layer1_")) == [
        "layer1_0", "layer1_1", "layer1_2", "layer1_3"]
    chex.assert_shape(params["layer1_3"]["conv3"]["kernel"], (1, 1, 64, 256))
    chex.assert_shape(params["transition1_0_0"]["kernel"], (3, 3, 256, 32))


@pytest.mark.parametrize(("stage1", "message"), [
    (StageConfig(1, 2, (2, 2), (64, 64), "BOTTLENECK"), r"model\.stage1: .*num_branches"),
    (StageConfig(2, 1, (2,), (64,), "BOTTLENECK"), r"model\.stage1: .*num_modules"),
    (StageConfig(1, 1, (2,), (64,), "RESIDUAL"), r"model\.stage1\.block: .*'RESIDUAL'"),
    (StageConfig(1, 1, (2, 2), (64,), "BOTTLENECK"), r"model\.stage1: num_branches 1"),
    (StageConfig(1, 1, (0,), (64,), "BOTTLENECK"), r"model\.stage1: .*at least 1 module and 1 block"),
])
def test_a_stage1_that_is_not_one_branch_of_known_blocks_is_rejected_naming_model_stage1(
        stage1, message):
    cfg = get_config("hrnet_w8")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, stage1=stage1))
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


@pytest.mark.parametrize("name", ["stage2", "stage3", "stage4"])
def test_a_branch_without_blocks_or_a_stage_without_modules_is_rejected(name):
    # The reference builds at least one block per branch and one module per stage.
    cfg = get_config("hrnet_w8")
    stage = getattr(cfg.model, name)
    no_block = dataclasses.replace(stage, num_blocks=(0,) + tuple(stage.num_blocks[1:]))
    no_module = dataclasses.replace(stage, num_modules=0)
    for bad in (no_block, no_module):
        bad_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{name: bad}))
        with pytest.raises(ValueError, match=rf"model\.{name}: .*at least 1 module and 1 block"):
            build_model(bad_cfg)


# --------------------------------------------------------------------------- initialisation


def test_conv_kernels_start_from_normal_std_0_001_and_batchnorm_from_1_and_0(tiny_initialised):
    _, _, variables = tiny_initialised
    params = variables["params"]
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
               if path[-1].key == "kernel"]
    values = np.concatenate([np.ravel(k) for k in kernels])
    assert values.size > 10_000
    assert abs(values.mean()) < 1e-4
    assert values.std() == pytest.approx(0.001, rel=0.05)
    np.testing.assert_array_equal(params["final_layer"]["bias"], np.zeros(16))
    bn_scales = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                 if path[-1].key == "scale"]
    bn_biases = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                 if path[-1].key == "bias" and path[0].key != "final_layer"]
    assert all(np.all(np.asarray(s) == 1) for s in bn_scales)
    assert all(np.all(np.asarray(b) == 0) for b in bn_biases)
    stats = variables["batch_stats"]
    assert all(np.all(np.asarray(leaf) == (1 if path[-1].key == "var" else 0))
               for path, leaf in jax.tree_util.tree_leaves_with_path(stats))


def test_the_trainers_initialisation_gives_the_networks_variables_from_the_same_rule(
        tiny_initialised):
    from hrnet_jax.train.state import init_variables

    cfg, _, variables = tiny_initialised
    drawn = init_variables(cfg, jax.random.key(3))
    assert jax.tree.structure(drawn) == jax.tree.structure(
        {"params": variables["params"], "batch_stats": variables["batch_stats"]})
    kernels = []
    for (path, leaf), (_, own) in zip(jax.tree_util.tree_leaves_with_path(drawn),
                                      jax.tree_util.tree_leaves_with_path(
                                          {"params": variables["params"],
                                           "batch_stats": variables["batch_stats"]}),
                                      strict=True):
        assert leaf.shape == own.shape and leaf.dtype == own.dtype == jnp.float32, path
        if path[-1].key == "kernel":
            kernels.append(np.ravel(leaf))
        else:  # the constants: BatchNorm scale and running variance 1, the rest 0
            np.testing.assert_array_equal(leaf, own, err_msg=jax.tree_util.keystr(path))
    values = np.concatenate(kernels)
    assert values.size > 10_000
    assert abs(values.mean()) < 1e-4
    assert values.std() == pytest.approx(0.001, rel=0.05)
    # A normal distribution: 68.3% of the draws within one standard deviation.
    assert np.mean(np.abs(values) < 0.001) == pytest.approx(0.683, abs=0.02)
    # Every kernel has draws of its own.
    firsts = {float(k[0]) for k in kernels}
    assert len(firsts) == len(kernels)
    again = init_variables(cfg, jax.random.key(3))
    other = init_variables(cfg, jax.random.key(4))
    for a, b in zip(jax.tree.leaves(drawn), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    kernel = drawn["params"]["conv1"]["kernel"]
    assert not np.array_equal(kernel, other["params"]["conv1"]["kernel"])


def test_the_trainers_initialisation_names_a_variable_it_has_no_rule_for(monkeypatch):
    from hrnet_jax.models import layers
    from hrnet_jax.train import state

    monkeypatch.setattr(state, "INITIAL_CONSTANTS",
                        {k: v for k, v in layers.INITIAL_CONSTANTS.items() if k != "var"})
    with pytest.raises(ValueError, match=r"no initial value for \['batch_stats'\]\['bn1'\]"
                                         r"\['var'\]"):
        state.init_variables(_tiny_config(), jax.random.key(0))


# --------------------------------------------------------------------------- layers


def test_stride_2_3x3_conv_pads_one_pixel_on_every_side_like_pytorch():
    # 4x4 input 0..15, all-ones 3x3 kernel, stride 2, one pixel of zeros on
    # each side: the windows cover rows/cols {-1,0,1} and {1,2,3}.
    x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
    conv = conv2d(1, 3, 2, "c")
    params = {"params": {"kernel": jnp.ones((3, 3, 1, 1))}}
    out = conv.apply(params, x)[0, :, :, 0]
    expected = np.array([[0 + 1 + 4 + 5, 1 + 2 + 3 + 5 + 6 + 7],
                         [4 + 5 + 8 + 9 + 12 + 13, 5 + 6 + 7 + 9 + 10 + 11 + 13 + 14 + 15]])
    np.testing.assert_array_equal(out, expected)  # 'SAME' would give [[45, ...]]


def test_nearest_upsampling_repeats_each_pixel_into_a_block():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    out = upsample_nearest(x, 2)[0, :, :, 0]
    np.testing.assert_array_equal(out, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    chex.assert_shape(upsample_nearest(jnp.zeros((2, 3, 5, 7)), 4), (2, 12, 20, 7))


def test_batchnorm_eval_uses_running_statistics_with_epsilon_1e_5():
    bn = BatchNorm()
    variables = {"params": {"scale": jnp.array([2.0]), "bias": jnp.array([1.0])},
                 "batch_stats": {"mean": jnp.array([3.0]), "var": jnp.array([4.0])}}
    out = bn.apply(variables, jnp.full((1, 1, 1, 1), 7.0), train=False)
    # (7 - 3) / sqrt(4 + 1e-5) * 2 + 1
    np.testing.assert_allclose(out, 4.0 / np.sqrt(4.00001) * 2 + 1, rtol=1e-6)


def test_batchnorm_training_keeps_0_9_of_running_stats_and_adds_0_1_of_unbiased_batch_var():
    bn = BatchNorm()
    x = jnp.array([1.0, 2.0, 3.0, 6.0]).reshape(4, 1, 1, 1)  # mean 3, biased var 3.5
    variables = {"params": {"scale": jnp.ones(1), "bias": jnp.zeros(1)},
                 "batch_stats": {"mean": jnp.zeros(1), "var": jnp.ones(1)}}
    out, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out.ravel(), (np.array([1, 2, 3, 6]) - 3) / np.sqrt(3.5 + 1e-5),
                               rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], [0.3], rtol=1e-6)
    # unbiased var = 14 / 3
    np.testing.assert_allclose(updates["batch_stats"]["var"], [0.9 + 0.1 * 14 / 3], rtol=1e-6)


def test_batchnorm_training_gradients_follow_the_batch_normalisation_formulas():
    # y = scale * xhat + bias with xhat = (x - mean) / sqrt(var + eps) over the batch; for an
    # upstream gradient g: d bias = sum g, d scale = sum g * xhat and
    # d x = scale / sqrt(var + eps) * (g - mean(g) - xhat * mean(g * xhat)).
    bn = BatchNorm()
    x = jnp.array([1.0, 2.0, 3.0, 6.0]).reshape(4, 1, 1, 1)  # mean 3, biased var 3.5
    stats = {"mean": jnp.zeros(1), "var": jnp.ones(1)}
    weights = jnp.array([1.0, 0.0, 0.0, 2.0]).reshape(4, 1, 1, 1)  # g

    def objective(x, params):
        out, _ = bn.apply({"params": params, "batch_stats": stats}, x, train=True,
                          mutable=["batch_stats"])
        return jnp.sum(out * weights)

    d_x, d_params = jax.grad(objective, argnums=(0, 1))(
        x, {"scale": jnp.array([2.0]), "bias": jnp.array([0.5])})
    g = np.array([1.0, 0.0, 0.0, 2.0])
    std = np.sqrt(3.5 + 1e-5)
    xhat = (np.array([1.0, 2.0, 3.0, 6.0]) - 3.0) / std  # [-2, -1, 0, 3] / std
    np.testing.assert_allclose(d_params["bias"], [3.0], rtol=1e-6)
    np.testing.assert_allclose(d_params["scale"], [np.sum(g * xhat)], rtol=1e-6)  # 4 / std
    np.testing.assert_allclose(
        d_x.ravel(), 2.0 / std * (g - g.mean() - xhat * np.mean(g * xhat)), rtol=1e-5, atol=1e-7)


def test_batchnorm_training_keeps_only_its_input_in_its_own_dtype_for_the_backward_pass(capsys):
    # A float32 copy of every normalised bfloat16 tensor, kept for the backward pass, was
    # most of a bfloat16 train step's memory; the backward pass computes it again instead.
    bn = BatchNorm(dtype=jnp.bfloat16)
    params = {"scale": jnp.ones(16), "bias": jnp.zeros(16)}
    stats = {"mean": jnp.zeros(16), "var": jnp.ones(16)}

    def objective(x, params):
        out, _ = bn.apply({"params": params, "batch_stats": stats}, x, train=True,
                          mutable=["batch_stats"])
        return jnp.sum(out.astype(jnp.float32))

    from jax.ad_checkpoint import print_saved_residuals

    print_saved_residuals(objective, jnp.ones((4, 8, 8, 16), jnp.bfloat16), params)
    saved = [line.split(" ")[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(saved) == ["bf16[4,8,8,16]", "f32[16]", "f32[16]", "f32[16]"], saved


def test_synchronised_batchnorm_pools_statistics_over_the_named_axis():
    bn = BatchNorm(axis_name="batch")
    variables = {"params": {"scale": jnp.ones(1), "bias": jnp.zeros(1)},
                 "batch_stats": {"mean": jnp.zeros(1), "var": jnp.ones(1)}}
    # Two "devices" holding [1, 2] and [3, 6]: pooled mean 3, variance 3.5 (14/3 unbiased).
    x = jnp.array([[1.0, 2.0], [3.0, 6.0]]).reshape(2, 2, 1, 1, 1)
    out, updates = jax.vmap(
        lambda x: bn.apply(variables, x, train=True, mutable=["batch_stats"]),
        axis_name="batch")(x)
    np.testing.assert_allclose(out.ravel(), (np.array([1, 2, 3, 6]) - 3) / np.sqrt(3.5 + 1e-5),
                               rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], [[0.3], [0.3]], rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], [[0.9 + 0.1 * 14 / 3]] * 2,
                               rtol=1e-6)


def test_synchronised_batchnorm_gradients_are_those_of_the_pooled_batch():
    # Two "devices" holding [1, 2] and [3, 6] normalise as one batch [1, 2, 3, 6]: each
    # input's gradient is the one-device formula over the pooled batch, while d scale
    # and d bias sum over each device's own half (the train step averages them after).
    bn = BatchNorm(axis_name="batch")
    stats = {"mean": jnp.zeros(1), "var": jnp.ones(1)}
    params = {"scale": jnp.array([2.0]), "bias": jnp.array([0.5])}
    x = jnp.array([[1.0, 2.0], [3.0, 6.0]]).reshape(2, 2, 1, 1, 1)
    weights = jnp.array([[1.0, 0.0], [0.0, 2.0]]).reshape(2, 2, 1, 1, 1)  # g

    def objective(x, params, weights):
        out, _ = bn.apply({"params": params, "batch_stats": stats}, x, train=True,
                          mutable=["batch_stats"])
        return jnp.sum(out * weights)

    d_x, d_params = jax.vmap(jax.grad(objective, argnums=(0, 1)), in_axes=(0, None, 0),
                             axis_name="batch")(x, params, weights)
    g = np.array([1.0, 0.0, 0.0, 2.0])
    std = np.sqrt(3.5 + 1e-5)
    xhat = (np.array([1.0, 2.0, 3.0, 6.0]) - 3.0) / std
    np.testing.assert_allclose(
        d_x.ravel(), 2.0 / std * (g - g.mean() - xhat * np.mean(g * xhat)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_params["bias"].ravel(), [1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(d_params["scale"].ravel(), [g[0] * xhat[0], g[3] * xhat[3]],
                               rtol=1e-6)


def test_batch_moments_take_one_pass_and_stay_exact_for_a_channel_far_from_zero():
    # Channel 0 holds 1000 + [0.5, 1.5, -0.5, 2.5]: mean 1001, biased variance
    # (0.25 + 0.25 + 2.25 + 2.25) / 4 = 1.25. Squares of about 1e6 would lose the
    # variance to float32 rounding (E[x^2] - mean^2 = 1002002.25 - 1002001); shifted by
    # the channel's first value 1000.5 the sums are of [0, 1, -1, 2], exact in float32.
    # Channel 1 holds [1, 2, 3, 6]: mean 3, variance 3.5. Channel 2 is constant: variance 0.
    x = jnp.array([[1000.5, 1.0, 5.0], [1001.5, 2.0, 5.0], [999.5, 3.0, 5.0],
                   [1002.5, 6.0, 5.0]]).reshape(2, 2, 1, 3)
    mean, var = batch_moments(x)
    np.testing.assert_array_equal(mean, [1001.0, 3.0, 5.0])
    np.testing.assert_array_equal(var, [1.25, 3.5, 0.0])


def test_synchronised_batch_moments_shift_every_device_by_the_same_value():
    # Devices [1000.5, 1001.5] and [999.5, 1002.5]: each shifts by the mean of the first
    # values, 1000, and the pooled moments are those of the whole batch, 1001 and 1.25.
    x = jnp.array([[1000.5, 1001.5], [999.5, 1002.5]]).reshape(2, 2, 1, 1, 1)
    mean, var = jax.vmap(lambda x: batch_moments(x, "batch"), axis_name="batch")(x)
    np.testing.assert_array_equal(mean, [[1001.0], [1001.0]])
    np.testing.assert_array_equal(var, [[1.25], [1.25]])


def test_batch_moments_of_random_channels_far_from_zero_match_float64_within_1e_4():
    rng = np.random.default_rng(3)
    offsets = np.array([0.0, 3.0, -50.0, 1e4], np.float32)
    x = (rng.normal(size=(16, 16, 16, 4)) + offsets).astype(np.float32)
    mean, var = batch_moments(jnp.asarray(x))
    x64 = x.astype(np.float64).reshape(-1, 4)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, x64.var(0), rtol=1e-4)


def test_build_model_passes_the_batchnorm_axis_name_to_every_batchnorm():
    model = build_model(get_config("hrnet_w8"), bn_axis_name="batch")
    assert model.bn_axis_name == "batch"
    x = jax.ShapeDtypeStruct((2, 1, 3, 64, 64), jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)), train=False))
    # Under vmap with that axis name the train step traces; without it pmean has no axis.
    step = jax.vmap(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0],
                    in_axes=(None, 0), axis_name="batch")
    chex.assert_shape(jax.eval_shape(step, variables, x), (2, 1, 16, 16, 16))
    with pytest.raises((NameError, ValueError), match="batch"):
        jax.eval_shape(lambda v, x: model.apply(v, x[0], train=True, mutable=["batch_stats"]),
                       variables, x)


# --------------------------------------------------------------------------- real forward passes


def test_hrnet_w8_train_step_at_64x64_gives_16x16_heatmaps_and_updates_batch_stats():
    cfg = get_config("hrnet_w8")
    model = build_model(cfg)
    assert isinstance(model, HRNet)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)), train=False))
    variables = _random_variables(abstract)
    x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    out, updates = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    chex.assert_shape(out, (2, 16, 16, 16))
    chex.assert_type(out, jnp.float32)
    chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])

    # bn1 sees conv1(x): 3x3, stride 2, one pixel of padding, computed here by
    # XLA directly in PyTorch's NCHW/OIHW layout.
    kernel = np.transpose(variables["params"]["conv1"]["kernel"], (3, 2, 0, 1))
    conv1 = np.asarray(jax.lax.conv_general_dilated(
        x, kernel, (2, 2), ((1, 1), (1, 1)), precision="highest"), np.float64)
    n = conv1.shape[0] * conv1.shape[2] * conv1.shape[3]
    batch_mean = conv1.mean(axis=(0, 2, 3))
    batch_var = conv1.var(axis=(0, 2, 3)) * n / (n - 1)
    old = variables["batch_stats"]["bn1"]
    new = updates["batch_stats"]["bn1"]
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * batch_mean,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * batch_var,
                               rtol=1e-4, atol=1e-5)
    # Deep layers too: every running statistic moved.
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(moved))


def test_eval_mode_is_deterministic_and_leaves_batch_stats_alone(tiny_initialised):
    cfg, model, _ = tiny_initialised
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)), train=False))
    variables = _random_variables(abstract, seed=3)
    x = np.random.default_rng(2).normal(size=(3, 3, 64, 64)).astype(np.float32)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = apply(variables, x)
    chex.assert_shape(out, (3, 16, 16, 16))
    # Each sample is normalised with running statistics only: a batch of one gives the same
    # (up to float32 summation order; the random weights make outputs in the hundreds).
    scale = float(np.abs(out).max())
    np.testing.assert_allclose(apply(variables, x[1:2])[0], out[1], rtol=0, atol=1e-5 * scale)
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))(
        variables, x)
    chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])


def test_bfloat16_compute_stays_close_to_float32(tiny_initialised):
    _, model32, _ = tiny_initialised
    model16 = build_model(_tiny_config("bfloat16"))
    abstract = jax.eval_shape(
        lambda: model32.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)), train=False))
    variables = _random_variables(abstract, seed=4)
    x = np.random.default_rng(5).normal(size=(2, 3, 64, 64)).astype(np.float32)
    out32 = jax.jit(model32.apply)(variables, x)
    out16 = jax.jit(model16.apply)(variables, x)
    assert out16.dtype == jnp.float32
    scale = float(np.abs(out32).max())
    assert float(np.abs(out16 - out32).max()) < 0.05 * scale


# --------------------------------------------------------------------------- scanning


def _repeating_config(scan: str, dtype: str = "float32"):
    """hrnet_w8 at 64x64 with repeats to scan: 2 blocks per branch, stage 3 of 2 modules.

    At 64x64 and batch 2 the lowest branch is 2x2, so its BatchNorms normalise 8
    values: over 2 (a 32x32 input) each output is +-1 whatever the input, and the
    gradients reaching the convolutions before them are rounding noise.
    """
    cfg = get_config("hrnet_w8")
    model = dataclasses.replace(
        cfg.model, image_size=(64, 64), heatmap_size=(16, 16), dtype=dtype, scan=scan,
        stage2=StageConfig(1, 2, (2, 2), (8, 16)),
        stage3=StageConfig(2, 3, (2, 2, 2), (8, 16, 32)),
        stage4=StageConfig(1, 4, (1, 1, 1, 1), (8, 16, 32, 64)),
    )
    return dataclasses.replace(cfg, model=model)


@functools.cache
def _forward(scan: str, dtype: str = "float32", gradients: bool = False):
    """Eval heatmaps, train heatmaps, updated statistics (and gradients) of one random network."""
    model = build_model(_repeating_config(scan, dtype))
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)), train=False))
    variables = _random_variables(abstract, seed=6)
    x = np.random.default_rng(7).normal(size=(2, 3, 64, 64)).astype(np.float32)

    def loss(params):
        out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                   x, train=True, mutable=["batch_stats"])
        return jnp.mean(jnp.square(out)), (out, updates["batch_stats"])

    eval_out = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
    if gradients:
        (_, (train_out, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
            variables["params"])
    else:
        (_, (train_out, stats)), grads = jax.jit(loss)(variables["params"]), None
    return jax.device_get((eval_out, train_out, stats, grads))


@pytest.mark.parametrize(("scan", "dtype"), [("blocks", "float32"), ("modules", "float32"),
                                             ("all", "bfloat16")])
def test_scanning_repeated_blocks_and_modules_computes_what_the_unrolled_network_does(
        scan, dtype):
    # The same operations in the same order: the heatmaps are identical.
    eval_u, train_u, stats_u, _ = _forward("none", dtype)
    eval_s, train_s, stats_s, _ = _forward(scan, dtype)
    np.testing.assert_array_equal(eval_s, eval_u)
    np.testing.assert_array_equal(train_s, train_u)
    # The running statistics come out of fusions XLA builds differently inside a loop and
    # out of it: they agree to the last bit or two of float32 (1.1e-7 relative seen).
    chex.assert_trees_all_close(stats_s, stats_u, rtol=1e-6, atol=1e-8)


def test_gradients_through_the_scanned_network_equal_the_unrolled_ones():
    eval_u, train_u, stats_u, grads_u = _forward("none", gradients=True)
    eval_s, train_s, stats_s, grads_s = _forward("all", gradients=True)
    np.testing.assert_array_equal(train_s, train_u)
    # With gradients taken too, XLA fuses the batch means into other reductions than
    # without: the statistics agree to float32 summation order (a few ulp), not bit for bit.
    chex.assert_trees_all_close(stats_s, stats_u, rtol=1e-6, atol=1e-8)
    # Another program sums in another float32 order: every leaf within 1e-5 of its
    # largest gradient (about 1.5e-6 seen).
    chex.assert_trees_all_equal_structs(grads_s, grads_u)
    for a, b in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads_u), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))
    assert float(np.abs(grads_u["stage3_1"]["branches_2_1"]["conv2"]["kernel"]).max()) > 0


def test_every_scan_mode_creates_the_same_variable_names_and_shapes():
    shapes = {}
    for scan in SCAN_MODES:
        model = build_model(_repeating_config(scan))
        shapes[scan] = jax.eval_shape(
            lambda model=model: model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)),
                                           train=False))
    for scan in SCAN_MODES:
        chex.assert_trees_all_equal_shapes_and_dtypes(shapes[scan], shapes["none"])
    assert "branches_0_1" in shapes["all"]["params"]["stage3_1"]


def _layer1_config(scan: str, num_blocks: int, planes: int):
    """A small network whose layer1 has ``num_blocks`` BOTTLENECK blocks of ``planes``."""
    cfg = get_config("hrnet_w8")
    return dataclasses.replace(cfg.model, scan=scan,
                               stage1=StageConfig(1, 1, (num_blocks,), (planes,), "BOTTLENECK"),
                               stage2=StageConfig(1, 2, (1, 1), (8, 16)),
                               stage3=StageConfig(1, 3, (1, 1, 1), (8, 16, 32)),
                               stage4=StageConfig(1, 4, (1, 1, 1, 1), (8, 16, 32, 64)))


@functools.cache
def _layer1_outputs(scan: str, num_blocks: int, planes: int):
    """Eval heatmaps, train heatmaps and updated statistics of one random such network."""
    model = build_model(_layer1_config(scan, num_blocks, planes))
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)), train=False))
    assert sorted(k for k in abstract["params"] if k.startswith("layer1_")) == [
        f"layer1_{k}" for k in range(num_blocks)]
    variables = _random_variables(abstract, seed=9)
    x = np.random.default_rng(8).normal(size=(2, 3, 32, 32)).astype(np.float32)
    eval_out = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
    train_out = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables)
    return jax.device_get((eval_out, train_out))


# 8 planes widen the stem's 64 channels to 32 (a downsampling first block and
# num_blocks - 1 alike ones); 16 planes keep 64 (every block alike).
@pytest.mark.parametrize(("num_blocks", "planes", "scan"), [
    *((n, 8, scan) for n in (1, 2, 3) for scan in ("blocks", "modules", "all")),
    (3, 16, "blocks"),
])
def test_layer1_of_any_block_count_computes_the_same_in_every_scan_mode(num_blocks, planes, scan):
    # The same operations; XLA may fuse the scanned program's sums differently (1 ulp).
    chex.assert_trees_all_close(_layer1_outputs(scan, num_blocks, planes),
                                _layer1_outputs("none", num_blocks, planes),
                                rtol=1e-5, atol=1e-6)


def test_scanning_the_w32_train_program_lowers_under_half_the_convolutions():
    # XLA compiles each convolution it is given: count the convolutions JAX
    # lowers for HRNet-W32 (lowering only, nothing is compiled).
    counts = {}
    variables = _abstract_variables("hrnet_w32", 256, 256)
    x = jax.ShapeDtypeStruct((1, 3, 64, 64), jnp.float32)
    for scan in ("none", "blocks", "all"):
        model = HRNet(dataclasses.replace(get_config("hrnet_w32").model, scan=scan))

        def loss(params, batch_stats, x, model=model):
            out, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.mean(out)

        lowered = jax.jit(jax.grad(loss)).lower(variables["params"], variables["batch_stats"], x)
        counts[scan] = lowered.as_text().count("stablehlo.convolution")
    # 293 convolutions forward (the reference's 293 conv weights), and up to two
    # per convolution backward (none for the input's gradient).
    assert 2 * 293 < counts["none"] < 3 * 293
    # Stage 3's four modules and stage 4's first two, each of four blocks of
    # two convolutions per branch: the blocks scanned, each branch's four
    # blocks lower once; the modules scanned too, each stage's modules once.
    assert counts["blocks"] < counts["none"] / 2
    assert counts["all"] < counts["none"] / 4


def test_scan_auto_scans_the_blocks_on_the_cpu_unrolls_elsewhere_and_names_unknown_modes():
    from hrnet_jax.models.scan import scan_mode, scan_name

    assert scan_mode("auto", "cpu") == (True, False)
    assert scan_mode("auto", "gpu") == (False, False)
    assert scan_mode("auto") == scan_mode("auto", jax.default_backend())
    assert scan_mode("blocks") == (True, False)
    assert (scan_name("auto", "cpu"), scan_name("auto", "gpu")) == ("blocks", "none")
    assert scan_name("modules", "gpu") == "modules"
    assert scan_mode("none") == (False, False)
    assert scan_mode("all") == (True, True)
    with pytest.raises(ValueError, match=r"model\.scan: expected 'auto' or one of .*'blocks'"):
        build_model(_repeating_config("sometimes"))


@pytest.mark.parametrize("scan", ["none", "all"])
def test_in_bfloat16_every_convolution_forward_and_backward_runs_in_bfloat16(scan):
    import re

    model = build_model(_repeating_config(scan, "bfloat16"))
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)), train=False))

    def loss(params, batch_stats, x):
        out, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                             mutable=["batch_stats"])
        return jnp.mean(out)

    text = jax.jit(jax.grad(loss)).lower(
        abstract["params"], abstract["batch_stats"],
        jax.ShapeDtypeStruct((2, 3, 32, 32), jnp.float32)).as_text()
    convolutions = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    types = {re.search(r"\) -> tensor<[^>]*x(\w+)>", line).group(1) for line in convolutions}
    operand_types = set(re.findall(r"tensor<[\dx]+x(\w+)>", "\n".join(convolutions)))
    assert len(convolutions) > 60
    assert types == operand_types == {"bf16"}
