"""The whole network against outputs the reference's own PyTorch code recorded (no torch here).

specs/golden/make_golden.py built the reference's ``PoseHighResolutionNet``
(lib/models/pose_hrnet.py) with random weights and BatchNorm statistics, ran a
random input through it in eval mode and in train mode, and stored weights,
input, heatmaps and the running statistics after the train-mode forward in
specs/golden/*.npz (see specs/golden/README.md). Here the stored state_dict is
converted and run through :func:`hrnet_jax.models.build_model` of the
project's own configuration.

The networks run op by op, not jitted: compiling the full W8 topology takes
about 50 s on a 2-core CPU, running it op by op about 10 s.
"""

import functools
import json
import pathlib

import jax
import numpy as np
import pytest

from hrnet_jax import convert
from hrnet_jax.config import get_config, override
from hrnet_jax.models import build_model

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"

# Each golden model as the project configures it: a preset and overrides.
CONFIGS = {
    # hrnet_w32's topology (1, 4, 3 modules of 4 BASIC blocks per branch) at widths 8..64.
    "w8_mpii": ("hrnet_w8", ["model.image_size=64,64", "model.heatmap_size=16,16"]),
    "w8_mpii_final3x3": ("hrnet_w8", ["model.image_size=64,64", "model.heatmap_size=16,16",
                                      "model.final_conv_kernel=3"]),
    # 17 joints on a 64x96 (width x height) input; one module of 2 blocks per branch and stage.
    "w8_coco": ("hrnet_w8_coco", [
        "model.image_size=64,96", "model.heatmap_size=16,24",
        "model.stage2.num_blocks=2,2",
        "model.stage3.num_modules=1", "model.stage3.num_blocks=2,2,2",
        "model.stage4.num_modules=1", "model.stage4.num_blocks=2,2,2,2",
    ]),
}
NAMES = list(CONFIGS)
# The unrolled network, the default one whose repeated blocks run as lax.scan, and
# the one whose repeated modules are scanned too.
SCANS = ["none", "blocks", "all"]
CASES = [(name, scan) for name in NAMES for scan in SCANS]


def _config(name: str, scan: str = "none"):
    preset, overrides = CONFIGS[name]
    return override(get_config(preset), [*overrides, f"model.scan={scan}"])


def _unpack(data, prefix: str) -> dict[str, np.ndarray]:
    layout = json.loads(str(data[f"{prefix}_layout"]))
    values = data[f"{prefix}_values"]
    sizes = [int(np.prod(shape)) for _, shape in layout]
    assert sum(sizes) == values.size, f"{prefix}: layout and values disagree"
    parts = np.split(values, np.cumsum(sizes)[:-1])
    return {key: part.reshape(shape) for (key, shape), part in zip(layout, parts, strict=True)}


@functools.cache
def _golden(name: str) -> dict:
    with np.load(GOLDEN / f"{name}.npz") as data:
        record = {key: data[key] for key in ("input", "eval_output", "train_output")}
        record["reference_cfg"] = json.loads(str(data["reference_cfg"]))
        base = str(data["base"])
        state_dict = _unpack(data, "state_dict")
        record["running_stats"] = _unpack(data, "running_stats")
    if base:
        state_dict = {**_golden(base)["state_dict"], **state_dict}
    record["state_dict"] = {k: v.astype(np.float32) for k, v in state_dict.items()}
    record["input"] = record["input"].astype(np.float32)
    return record


@functools.cache
def _run(name: str, train: bool, scan: str):
    """Heatmaps (and, in train mode, the updated batch_stats) of the converted golden weights."""
    cfg = _config(name, scan)
    golden = _golden(name)
    variables = convert.torch_state_dict_to_variables(golden["state_dict"], cfg)
    model = build_model(cfg)
    with jax.default_matmul_precision("highest"):
        if train:
            out, updates = model.apply(variables, golden["input"], train=True,
                                       mutable=["batch_stats"])
            return np.asarray(out), jax.device_get(updates["batch_stats"])
        return np.asarray(model.apply(variables, golden["input"], train=False)), None


def _relative_error(out: np.ndarray, expected: np.ndarray) -> float:
    assert out.shape == expected.shape, f"shape {out.shape}, reference {expected.shape}"
    return float(np.abs(out - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("name", NAMES)
def test_golden_files_hold_the_reference_network_of_the_project_config(name):
    cfg = _config(name).model
    golden = _golden(name)
    reference = golden["reference_cfg"]["MODEL"]
    assert reference["NUM_JOINTS"] == cfg.num_joints
    assert reference["EXTRA"]["FINAL_CONV_KERNEL"] == cfg.final_conv_kernel
    for stage_name in ("stage2", "stage3", "stage4"):
        stage = reference["EXTRA"][stage_name.upper()]
        ours = getattr(cfg, stage_name)
        assert (stage["NUM_MODULES"], stage["NUM_BRANCHES"], tuple(stage["NUM_BLOCKS"]),
                tuple(stage["NUM_CHANNELS"]), stage["BLOCK"], stage["FUSE_METHOD"]) == (
            ours.num_modules, ours.num_branches, ours.num_blocks, ours.num_channels,
            ours.block, ours.fuse_method)
    width, height = cfg.image_size
    assert golden["input"].shape == (2, 3, height, width)
    # The reference's own state_dict, entry by entry, is the layout convert.py derives.
    expected = [(e.name, e.shape) for e in convert.reference_layout(cfg)
                if not e.name.endswith("num_batches_tracked")]
    assert [(k, v.shape) for k, v in golden["state_dict"].items()] == expected


@pytest.mark.parametrize(("name", "scan"), CASES)
def test_eval_heatmaps_equal_the_reference_within_1e_4_of_their_largest_value(name, scan):
    out, _ = _run(name, train=False, scan=scan)
    expected = _golden(name)["eval_output"]
    error = _relative_error(out, expected)
    print(f"{name} scan={scan} eval: max relative error {error:.1e}")
    assert error < 1e-4


@pytest.mark.parametrize(("name", "scan"), CASES)
def test_train_mode_heatmaps_equal_the_reference_within_1e_3_of_their_largest_value(name, scan):
    out, _ = _run(name, train=True, scan=scan)
    expected = _golden(name)["train_output"]
    error = _relative_error(out, expected)
    print(f"{name} scan={scan} train: max relative error {error:.1e}")
    assert error < 1e-3


@pytest.mark.parametrize(("name", "scan"), CASES)
def test_running_statistics_after_one_train_forward_equal_the_reference_within_1e_4(name, scan):
    _, batch_stats = _run(name, train=True, scan=scan)
    expected = _golden(name)["running_stats"]
    entries = [e for e in convert.reference_layout(_config(name)) if e.collection == "batch_stats"]
    assert sorted(e.name for e in entries) == sorted(expected)
    errors = {}
    for entry in entries:
        value = batch_stats
        for key in entry.path:
            value = value[key]
        errors[entry.name] = _relative_error(np.asarray(value), expected[entry.name])
    worst = sorted(errors, key=errors.get, reverse=True)[:3]
    print(f"{name} running statistics: worst {[(k, f'{errors[k]:.1e}') for k in worst]}")
    assert errors[worst[0]] < 1e-4, {k: errors[k] for k in worst}
