"""Configuration: presets, the reference YAML format, and overrides."""

import dataclasses
import json
import pathlib
import textwrap

import pytest
import yaml

from hrnet_jax import config


def test_hrnet_w32_is_mpii_16_joints_256x256_input_64x64_heatmaps_sigma_2():
    cfg = config.get_config("hrnet_w32")
    assert cfg.model.num_joints == 16
    assert cfg.model.image_size == (256, 256)
    assert cfg.model.heatmap_size == (64, 64)
    assert cfg.model.sigma == 2
    assert cfg.dataset.name == "mpii"


def test_hrnet_w32_stages_have_1_4_3_modules_of_4_basic_blocks():
    m = config.get_config("hrnet_w32").model
    assert [s.num_modules for s in (m.stage2, m.stage3, m.stage4)] == [1, 4, 3]
    for stage in (m.stage2, m.stage3, m.stage4):
        assert stage.block == "BASIC"
        assert set(stage.num_blocks) == {4}
    assert m.stage4.num_channels == (32, 64, 128, 256)


def test_any_width_preset_doubles_the_width_per_branch():
    m = config.get_config("hrnet_w8").model
    assert m.stage2.num_channels == (8, 16)
    assert m.stage3.num_channels == (8, 16, 32)
    assert m.stage4.num_channels == (8, 16, 32, 64)
    assert config.get_config("hrnet_w48").model.stage4.num_channels == (48, 96, 192, 384)


def test_coco_preset_is_17_joints_width_192_height_256_heatmap_48x64():
    cfg = config.get_config("hrnet_w32_coco")
    assert cfg.model.num_joints == 17
    assert cfg.model.image_size == (192, 256)
    assert cfg.model.heatmap_size == (48, 64)


def test_training_recipe_is_adam_1e_3_decayed_tenfold_at_epochs_170_and_200_over_210():
    t = config.get_config("hrnet_w32").train
    assert (t.optimizer, t.lr, t.lr_factor, t.lr_step, t.end_epoch) == ("adam", 1e-3, 0.1, (170, 200), 210)
    assert t.batch_size_per_device == 32


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="hrnet_w32"):
        config.get_config("resnet50")


def test_override_parses_values_to_the_field_type():
    cfg = config.override(config.get_config("hrnet_w8"),
                          ["train.lr=5e-4", "model.image_size=128,128", "test.flip_test=false",
                           "train.lr_step=[3, 4]", "workers=0"])
    assert cfg.train.lr == 5e-4
    assert cfg.model.image_size == (128, 128)
    assert cfg.test.flip_test is False
    assert cfg.train.lr_step == (3, 4)
    assert cfg.workers == 0


def test_override_of_an_unknown_key_names_the_key():
    with pytest.raises(ValueError, match="train.learning_rate"):
        config.override(config.get_config("hrnet_w8"), ["train.learning_rate=1"])


def test_config_survives_a_round_trip_through_plain_dicts():
    cfg = config.get_config("hrnet_w48_coco")
    assert config.from_dict(config.to_dict(cfg)) == cfg


# The reference pose network's layer1, fixed in its code: 4 BOTTLENECK blocks of 64 planes.
REFERENCE_LAYER1 = config.StageConfig(1, 1, (4,), (64,), "BOTTLENECK", "SUM")


def test_stage1_defaults_to_the_reference_layer1_of_four_bottleneck_blocks_of_64_planes():
    assert config.ModelConfig().stage1 == REFERENCE_LAYER1
    for name in config.preset_names():
        assert config.get_config(name).model.stage1 == REFERENCE_LAYER1


def test_override_reaches_the_fields_of_stage1():
    cfg = config.override(config.get_config("hrnet_w8"),
                          ["model.stage1.num_blocks=2", "model.stage1.num_channels=[32]",
                           "model.stage1.block=BASIC"])
    assert cfg.model.stage1 == config.StageConfig(1, 1, (2,), (32,), "BASIC")


def test_stage1_survives_json_and_a_config_saved_before_stage1_existed_gets_the_reference_layer1():
    cfg = config.override(config.get_config("hrnet_w8"), ["model.stage1.num_blocks=2"])
    saved = json.loads(json.dumps(config.to_dict(cfg)))  # as config.json holds it
    assert config.from_dict(saved) == cfg
    del saved["model"]["stage1"]
    assert config.from_dict(saved).model.stage1 == REFERENCE_LAYER1


def _write_reference_style_yaml(path: pathlib.Path) -> None:
    # A shortened experiment file in the reference's format (upper-case keys, MODEL.EXTRA stages).
    path.write_text(textwrap.dedent("""\
        GPUS: (0,1,2,3)
        WORKERS: 8
        PRINT_FREQ: 50
        CUDNN:
          BENCHMARK: true
        DATASET:
          DATASET: mpii
          ROOT: 'data/mpii/'
          FLIP: true
          ROT_FACTOR: 30
          SCALE_FACTOR: 0.25
          PROB_HALF_BODY: -1.0
        MODEL:
          NAME: pose_hrnet
          NUM_JOINTS: 16
          IMAGE_SIZE: [256, 256]
          HEATMAP_SIZE: [64, 64]
          SIGMA: 2
          EXTRA:
            FINAL_CONV_KERNEL: 1
            STAGE2: {NUM_MODULES: 1, NUM_BRANCHES: 2, BLOCK: BASIC, NUM_BLOCKS: [4, 4],
                     NUM_CHANNELS: [16, 32], FUSE_METHOD: SUM}
            STAGE3: {NUM_MODULES: 2, NUM_BRANCHES: 3, BLOCK: BASIC, NUM_BLOCKS: [4, 4, 4],
                     NUM_CHANNELS: [16, 32, 64], FUSE_METHOD: SUM}
            STAGE4: {NUM_MODULES: 1, NUM_BRANCHES: 4, BLOCK: BASIC, NUM_BLOCKS: [4, 4, 4, 4],
                     NUM_CHANNELS: [16, 32, 64, 128], FUSE_METHOD: SUM}
        TRAIN:
          BATCH_SIZE_PER_GPU: 24
          LR: 0.0005
          LR_STEP: [100, 150]
          END_EPOCH: 160
        TEST:
          FLIP_TEST: false
        """))


def test_reference_format_yaml_sets_stages_and_recipe(tmp_path):
    path = tmp_path / "w16.yaml"
    _write_reference_style_yaml(path)
    cfg = config.get_config(str(path))
    assert cfg.model.stage3.num_modules == 2
    assert cfg.model.stage4.num_channels == (16, 32, 64, 128)
    assert cfg.train.batch_size_per_device == 24
    assert cfg.train.lr == 5e-4
    assert cfg.train.lr_step == (100, 150)
    assert cfg.test.flip_test is False
    assert cfg.workers == 8 and cfg.print_freq == 50


def test_yaml_stage_with_inconsistent_branch_count_is_rejected_by_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  EXTRA:\n    STAGE2: {NUM_MODULES: 1, NUM_BRANCHES: 2, "
                    "NUM_BLOCKS: [4], NUM_CHANNELS: [32, 64]}\n")
    with pytest.raises(ValueError, match="STAGE2"):
        config.get_config(str(path))


def test_yaml_stage1_sets_layer1_and_a_stage1_without_block_keeps_bottleneck(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("MODEL:\n  EXTRA:\n    STAGE1: {NUM_MODULES: 1, NUM_BRANCHES: 1, "
                    "BLOCK: BOTTLENECK, NUM_BLOCKS: [2], NUM_CHANNELS: [64], FUSE_METHOD: SUM}\n")
    assert config.get_config(str(path)).model.stage1 == config.StageConfig(
        1, 1, (2,), (64,), "BOTTLENECK", "SUM")
    path.write_text("MODEL:\n  EXTRA:\n    STAGE1: {NUM_MODULES: 1, NUM_BRANCHES: 1, "
                    "NUM_BLOCKS: [1], NUM_CHANNELS: [32]}\n")
    assert config.get_config(str(path)).model.stage1 == config.StageConfig(
        1, 1, (1,), (32,), "BOTTLENECK", "SUM")


def test_yaml_stage1_with_inconsistent_branch_count_is_rejected_by_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  EXTRA:\n    STAGE1: {NUM_MODULES: 1, NUM_BRANCHES: 1, "
                    "NUM_BLOCKS: [2, 2], NUM_CHANNELS: [64]}\n")
    with pytest.raises(ValueError, match="STAGE1"):
        config.get_config(str(path))


def test_missing_yaml_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        config.get_config(str(tmp_path / "nope.yaml"))


# The reference's experiments (its experiments/{mpii,coco}/hrnet/*_adam_lr1e-3.yaml) as plain
# data in its section/key layout: every key that load_yaml reads; the keys it ignores (CUDNN,
# GPUS, OUTPUT_DIR, the COCO detection settings, ...) are left out. All three share the recipe.
_REFERENCE_RECIPE = {
    "LOSS": {"USE_TARGET_WEIGHT": True},
    "TRAIN": {"BATCH_SIZE_PER_GPU": 32, "SHUFFLE": True, "BEGIN_EPOCH": 0, "END_EPOCH": 210,
              "OPTIMIZER": "adam", "LR": 0.001, "LR_FACTOR": 0.1, "LR_STEP": [170, 200],
              "WD": 0.0001, "GAMMA1": 0.99, "GAMMA2": 0.0, "MOMENTUM": 0.9, "NESTEROV": False},
    "TEST": {"BATCH_SIZE_PER_GPU": 32, "MODEL_FILE": "", "FLIP_TEST": True, "POST_PROCESS": True,
             "SHIFT_HEATMAP": True},
    "WORKERS": 24,
    "PRINT_FREQ": 100,
    "DEBUG": {"DEBUG": True},
}
_REFERENCE_PRETRAINED_LAYERS = ["conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2",
                                "transition2", "stage3", "transition3", "stage4"]


def _reference_stages(width: int) -> dict:
    """MODEL.EXTRA.STAGE2..4 of the reference's HRNet-W{width}: 1, 4, 3 modules, 4 blocks a branch."""
    def stage(num_modules, branches):
        return {"NUM_MODULES": num_modules, "NUM_BRANCHES": branches, "BLOCK": "BASIC",
                "NUM_BLOCKS": [4] * branches,
                "NUM_CHANNELS": [width * 2**i for i in range(branches)], "FUSE_METHOD": "SUM"}
    return {"STAGE2": stage(1, 2), "STAGE3": stage(4, 3), "STAGE4": stage(3, 4)}


_MPII_DATASET = {"COLOR_RGB": True, "DATASET": "mpii", "DATA_FORMAT": "jpg", "FLIP": True,
                 "NUM_JOINTS_HALF_BODY": 8, "PROB_HALF_BODY": -1.0, "ROOT": "data/mpii/",
                 "ROT_FACTOR": 30, "SCALE_FACTOR": 0.25, "TEST_SET": "valid", "TRAIN_SET": "train"}

REFERENCE_EXPERIMENTS = {
    "mpii_w32_256x256_adam_lr1e-3": {
        "DATASET": _MPII_DATASET,
        "MODEL": {"NAME": "pose_hrnet", "NUM_JOINTS": 16, "TARGET_TYPE": "gaussian",
                  "PRETRAINED": "models/pytorch/imagenet/hrnet_w32-36af842e.pth",
                  "IMAGE_SIZE": [256, 256], "HEATMAP_SIZE": [64, 64], "SIGMA": 2,
                  "EXTRA": {"PRETRAINED_LAYERS": _REFERENCE_PRETRAINED_LAYERS,
                            "FINAL_CONV_KERNEL": 1, **_reference_stages(32)}},
        **_REFERENCE_RECIPE,
    },
    "mpii_w48_256x256_adam_lr1e-3": {
        "DATASET": _MPII_DATASET,
        "MODEL": {"NAME": "pose_hrnet", "NUM_JOINTS": 16, "TARGET_TYPE": "gaussian",
                  "PRETRAINED": "models/pytorch/imagenet/hrnet_w48-8ef0771d.pth",
                  "IMAGE_SIZE": [256, 256], "HEATMAP_SIZE": [64, 64], "SIGMA": 2,
                  "EXTRA": {"PRETRAINED_LAYERS": _REFERENCE_PRETRAINED_LAYERS,
                            "FINAL_CONV_KERNEL": 1, **_reference_stages(48)}},
        **_REFERENCE_RECIPE,
    },
    "coco_w32_256x192_adam_lr1e-3": {
        "DATASET": {"COLOR_RGB": True, "DATASET": "coco", "DATA_FORMAT": "jpg", "FLIP": True,
                    "NUM_JOINTS_HALF_BODY": 8, "PROB_HALF_BODY": 0.3, "ROOT": "data/coco/",
                    "ROT_FACTOR": 45, "SCALE_FACTOR": 0.35, "TEST_SET": "val2017",
                    "TRAIN_SET": "train2017"},
        "MODEL": {"NAME": "pose_hrnet", "NUM_JOINTS": 17, "TARGET_TYPE": "gaussian",
                  "PRETRAINED": "models/pytorch/imagenet/hrnet_w32-36af842e.pth",
                  "IMAGE_SIZE": [192, 256], "HEATMAP_SIZE": [48, 64], "SIGMA": 2,
                  "EXTRA": {"PRETRAINED_LAYERS": _REFERENCE_PRETRAINED_LAYERS,
                            "FINAL_CONV_KERNEL": 1, **_reference_stages(32)}},
        **_REFERENCE_RECIPE,
    },
}


def _load_reference_experiment(name: str, tmp_path: pathlib.Path) -> config.Config:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(REFERENCE_EXPERIMENTS[name], sort_keys=False))
    return config.load_yaml(str(path))


@pytest.mark.parametrize("name,preset", [("mpii_w32_256x256_adam_lr1e-3", "hrnet_w32"),
                                         ("mpii_w48_256x256_adam_lr1e-3", "hrnet_w48"),
                                         ("coco_w32_256x192_adam_lr1e-3", "hrnet_w32_coco")])
def test_reference_experiment_files_equal_the_presets_but_for_paths_workers_and_debug(
        name, preset, tmp_path):
    cfg = _load_reference_experiment(name, tmp_path)
    preset = config.get_config(preset)
    assert cfg.model == dataclasses.replace(preset.model, pretrained=cfg.model.pretrained)
    assert cfg.dataset == dataclasses.replace(preset.dataset, root=cfg.dataset.root)
    assert (cfg.train, cfg.test, cfg.loss) == (preset.train, preset.test, preset.loss)
    assert cfg.print_freq == preset.print_freq


def test_reference_experiment_files_without_stage1_get_the_reference_layer1(tmp_path):
    for name in REFERENCE_EXPERIMENTS:
        assert "STAGE1" not in REFERENCE_EXPERIMENTS[name]["MODEL"]["EXTRA"]
        assert _load_reference_experiment(name, tmp_path).model.stage1 == REFERENCE_LAYER1


def test_reference_experiment_files_are_read_with_their_own_paths_workers_and_widths(tmp_path):
    w48 = _load_reference_experiment("mpii_w48_256x256_adam_lr1e-3", tmp_path)
    assert w48.model.pretrained == "models/pytorch/imagenet/hrnet_w48-8ef0771d.pth"
    assert w48.model.stage4.num_channels == (48, 96, 192, 384)
    assert w48.dataset.root == "data/mpii/"
    assert (w48.workers, w48.debug) == (24, True)
    coco = _load_reference_experiment("coco_w32_256x192_adam_lr1e-3", tmp_path)
    assert coco.model.image_size == (192, 256) and coco.model.num_joints == 17
    assert coco.dataset.root == "data/coco/"


# --------------------------------------------------------------------------- fields read or not


def _experiment_with(tmp_path, section, **keys):
    data = yaml.safe_load(yaml.safe_dump(REFERENCE_EXPERIMENTS["mpii_w32_256x256_adam_lr1e-3"]))
    data.setdefault(section, {}).update(keys)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_begin_epoch_other_than_0_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"TRAIN\.BEGIN_EPOCH 5 .*resumes from the checkpoints"):
        config.load_yaml(_experiment_with(tmp_path, "TRAIN", BEGIN_EPOCH=5))


def test_gamma1_and_gamma2_which_the_reference_never_reads_are_accepted_and_ignored(tmp_path):
    plain = config.load_yaml(_experiment_with(tmp_path, "TRAIN", GAMMA1=0.99, GAMMA2=0.0))
    odd = config.load_yaml(_experiment_with(tmp_path, "TRAIN", GAMMA1=0.5, GAMMA2=7.0))
    assert plain == odd
    assert not hasattr(plain.train, "gamma1") and not hasattr(plain.train, "begin_epoch")


def test_init_weights_false_starts_from_the_random_initialisation(tmp_path):
    given = config.load_yaml(_experiment_with(tmp_path, "MODEL", INIT_WEIGHTS=True))
    assert given.model.pretrained == "models/pytorch/imagenet/hrnet_w32-36af842e.pth"
    off = config.load_yaml(_experiment_with(tmp_path, "MODEL", INIT_WEIGHTS=False))
    assert off.model.pretrained == ""


def test_a_config_saved_with_since_removed_fields_still_loads():
    saved = config.to_dict(config.get_config("hrnet_w32"))
    saved["train"].update(begin_epoch=0, gamma1=0.99, gamma2=0.0)
    assert config.from_dict(saved) == config.get_config("hrnet_w32")
    with pytest.raises(ValueError, match="train.begin_epoch"):
        config.override(config.get_config("hrnet_w32"), ["train.begin_epoch=0"])


def test_the_quickstart_presets_are_small_generated_set_experiments():
    for name, dataset, size in (("hrnet_quickstart", "synthetic", (128, 128)),
                                ("hrnet_quickstart_coco", "synthetic_coco", (96, 128))):
        cfg = config.get_config(name)
        assert cfg.dataset.name == dataset and cfg.model.image_size == size
        assert cfg.model.stage2.num_channels == (16, 32)
        assert cfg.model.stage3 == config.StageConfig(1, 3, (2, 2, 2), (16, 32, 64))
        assert cfg.model.stage4 == config.StageConfig(1, 4, (2, 2, 2, 2), (16, 32, 64, 128))
        assert cfg.train.lr_step == (cfg.train.end_epoch - 1,) and cfg.workers == 0
