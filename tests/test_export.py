"""Exported models: StableHLO and ONNX files against the JAX network, and scripts/export.py.

The expected heatmaps come from the network itself (``model.apply`` of
``build_model(cfg)``, jitted, variables as arguments) and from the flip
test as the README states it: the network on the images and on their
mirror images, the mirrored output flipped back, its joints swapped by
MPII's flip pairs, shifted one column right (column 0 kept) and averaged
with the plain output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import load_script, tiny_config
from hrnet_jax import export
from hrnet_jax.config import get_config
from hrnet_jax.model_file import save_model
from hrnet_jax.models import build_model
from hrnet_jax.train.checkpoint import Checkpoints
from hrnet_jax.train.state import trained_scale_variables as trained_like_variables

ROOT = Path(__file__).resolve().parents[1]
# MPII's left/right joint pairs (README, "Decoding and the flip test").
MPII_FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
# ONNX agreement asked of the converted graph: max |onnx - jax| / max |jax|.
ONNX_RELATIVE_TOLERANCE = 1e-4


def images_for(cfg, n, seed):
    width, height = cfg.model.image_size
    return np.random.default_rng(seed).standard_normal((n, 3, height, width), np.float32)


def network(cfg, variables, images):
    model = build_model(cfg)
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))


def flip_fused(cfg, variables, images):
    """The flip test as stated, the network run once on the images and their mirrors."""
    n = len(images)
    both = network(cfg, variables, np.concatenate([images, images[..., ::-1]]))
    plain, mirrored = both[:n], both[n:]
    order = list(range(cfg.model.num_joints))
    for a, b in MPII_FLIP_PAIRS:
        order[a], order[b] = b, a
    back = mirrored[:, order, :, ::-1]
    shifted = back.copy()
    shifted[..., 1:] = back[..., :-1]
    return (plain + shifted) * np.float32(0.5)


def relative_error(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.fixture
def needs_flatbuffers():
    # jax.export serialises with flatbuffers, in the export extra, not in jax's requirements.
    pytest.importorskip("flatbuffers")


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config()
    return cfg, trained_like_variables(cfg)


def test_stablehlo_file_runs_any_batch_bit_equal_to_the_jitted_network(tiny, tmp_path, needs_flatbuffers):
    cfg, variables = tiny
    path = export.to_stablehlo(variables, cfg, tmp_path / "tiny.stablehlo")
    model = export.load_stablehlo(path)
    assert model.input_shape == (None, 3, 64, 64)
    assert model.output_shape == (None, 16, 16, 16)
    for n in (1, 5):
        images = images_for(cfg, n, seed=n)
        heatmaps = model(images)
        assert heatmaps.shape == (n, 16, 16, 16) and heatmaps.dtype == np.float32
        np.testing.assert_array_equal(heatmaps, network(cfg, variables, images))
        np.testing.assert_array_equal(model(jax.numpy.asarray(images)), heatmaps)


def test_stablehlo_file_needs_only_jax(tiny, tmp_path, needs_flatbuffers):
    # Deployment: jax.export (with flatbuffers) runs the file, no hrnet_jax and no variables.
    cfg, variables = tiny
    path = export.to_stablehlo(variables, cfg, tmp_path / "tiny.stablehlo")
    images = images_for(cfg, 3, seed=7)
    np.save(tmp_path / "images.npy", images)
    code = ("import sys, jax, numpy as np\n"
            "sys.modules['hrnet_jax'] = None\n"
            "exported = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))\n"
            "np.save(sys.argv[3], np.asarray(exported.call(np.load(sys.argv[2]))))\n")
    subprocess.run([sys.executable, "-c", code, path, tmp_path / "images.npy",
                    tmp_path / "heatmaps.npy"], check=True, cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "heatmaps.npy"),
                                  network(cfg, variables, images))


def test_stablehlo_flip_test_file_equals_the_fused_flip_heatmaps(tiny, tmp_path, needs_flatbuffers):
    cfg, variables = tiny
    model = export.load_stablehlo(
        export.to_stablehlo(variables, cfg, tmp_path / "flip.stablehlo", flip_test=True))
    for n in (1, 3):
        images = images_for(cfg, n, seed=10 + n)
        np.testing.assert_array_equal(model(images), flip_fused(cfg, variables, images))


def test_fixed_batch_stablehlo_file_refuses_another_batch(tiny, tmp_path, needs_flatbuffers):
    cfg, variables = tiny
    path = export.to_stablehlo(variables, cfg, tmp_path / "b2.stablehlo", batch_size=2)
    model = export.load_stablehlo(path)
    assert model.batch_size == 2
    images = images_for(cfg, 3, seed=0)
    np.testing.assert_array_equal(model(images[:2]), network(cfg, variables, images[:2]))
    with pytest.raises(ValueError, match=r"b2\.stablehlo.*batch 2.*\(2, 3, 64, 64\).*\(3, 3, 64, 64\)"):
        model(images)
    with pytest.raises(ValueError, match=r"b2\.stablehlo.*\(2, 3, 64, 64\).*\(2, 64, 64, 3\)"):
        model(images[:2].transpose(0, 2, 3, 1))


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        export.load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="batch_size"):
        export.to_stablehlo({}, tiny_config(), tmp_path / "x", batch_size=0)
    pytest.importorskip("flatbuffers")
    bad = tmp_path / "bad.stablehlo"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.stablehlo"):
        export.load_stablehlo(bad)


def onnx_graph(path):
    onnx = pytest.importorskip("onnx")
    return onnx.load(os.fspath(path))


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_onnx_file_matches_the_network_for_batch_1_and_5(tiny, tmp_path):
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    cfg, variables = tiny
    path = export.to_onnx(variables, cfg, tmp_path / "tiny.onnx")
    graph = onnx_graph(path)
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["heatmaps"]
    assert dims(graph.graph.input[0]) == ["N", 3, 64, 64]
    assert dims(graph.graph.output[0]) == ["N", 16, 16, 16]
    assert graph.graph.input[0].type.tensor_type.elem_type == 1  # float32
    assert {o.domain: o.version for o in graph.opset_import}[""] == export.DEFAULT_OPSET
    ops = [node.op_type for node in graph.graph.node]
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
               if path[-1].key == "kernel"]
    # One Conv per convolution of the network; BatchNorm folded to Mul/Add
    # (no Sub, Sqrt or Div left of its arithmetic).
    assert ops.count("Conv") == len(kernels)
    assert not {"Sqrt", "Div", "Sub", "BatchNormalization"} & set(ops)
    model = export.load_onnx(path)
    for n in (1, 5):
        images = images_for(cfg, n, seed=20 + n)
        heatmaps = model(images)
        assert heatmaps.shape == (n, 16, 16, 16) and heatmaps.dtype == np.float32
        assert relative_error(heatmaps, network(cfg, variables, images)) < ONNX_RELATIVE_TOLERANCE


def test_onnx_file_of_the_quickstart_preset_matches_the_network(tmp_path):
    # A real preset (HRNet-W16, 128x128, every stage): all fusion paths.
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    cfg = get_config("hrnet_quickstart")
    variables = trained_like_variables(cfg, seed=1)
    model = export.load_onnx(export.to_onnx(variables, cfg, tmp_path / "quickstart.onnx"))
    images = images_for(cfg, 2, seed=3)
    assert relative_error(model(images), network(cfg, variables, images)) \
        < ONNX_RELATIVE_TOLERANCE


@pytest.mark.slow
def test_onnx_file_of_hrnet_w32_matches_the_network_for_batch_1_and_5(tmp_path):
    # The published model's size (256x256, 4 modules of 4 blocks per branch): one file, any batch.
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    cfg = get_config("hrnet_w32")
    variables = trained_like_variables(cfg, seed=2)
    model = export.load_onnx(export.to_onnx(variables, cfg, tmp_path / "w32.onnx"))
    for n in (1, 5):
        images = images_for(cfg, n, seed=40 + n)
        heatmaps = model(images)
        assert heatmaps.shape == (n, 16, 64, 64)
        assert relative_error(heatmaps, network(cfg, variables, images)) < ONNX_RELATIVE_TOLERANCE


def run_export_script(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "export.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def test_export_script_writes_a_fixed_batch_flip_test_onnx_file_from_a_saved_model(tiny, tmp_path):
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    cfg, variables = tiny
    saved = save_model(tmp_path / "model", variables, cfg)
    out = tmp_path / "deploy" / "pose.onnx"
    result = run_export_script("--checkpoint", saved, "--format", "onnx", "--out", out,
                               "--batch-size", 2, "--flip-test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"wrote {re.escape(str(out))} \(onnx, [0-9.]+ [KM]iB\) in [0-9.]+ s",
                     result.stdout), result.stdout
    assert "max |exported - JAX|" in result.stdout
    model = export.load_onnx(out)
    assert model.input_shape == (2, 3, 64, 64)
    images = images_for(cfg, 3, seed=5)
    assert relative_error(model(images[:2]), flip_fused(cfg, variables, images[:2])) \
        < ONNX_RELATIVE_TOLERANCE
    with pytest.raises(ValueError, match=r"pose\.onnx.*batch 2.*\(2, 3, 64, 64\).*\(3, 3, 64, 64\)"):
        model(images)


def test_export_script_fails_clearly(tiny, tmp_path, monkeypatch, capsys):
    cfg, variables = tiny
    result = run_export_script("--checkpoint", tmp_path / "nowhere", "--format", "stablehlo",
                               "--out", tmp_path / "x.stablehlo", cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "does not exist" in result.stderr

    # A checkpoint directory outside a work directory holds no configuration.
    checkpoints = Checkpoints(tmp_path / "loose_checkpoints", async_save=False)
    checkpoints.save(1, {"params": variables["params"], "batch_stats": variables["batch_stats"]},
                     {})
    checkpoints.wait()
    result = run_export_script("--checkpoint", tmp_path / "loose_checkpoints", "--format",
                               "stablehlo", "--out", tmp_path / "x.stablehlo", cwd=tmp_path)
    assert result.returncode == 2
    assert "holds no configuration" in result.stderr and "loose_checkpoints" in result.stderr
    assert not (tmp_path / "x.stablehlo").exists()

    # Without the converter (hidden here), the script names the extra to install.
    script = load_script("export")
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    saved = save_model(tmp_path / "model", variables, cfg)
    code = script.main(["--checkpoint", str(saved), "--format", "onnx",
                        "--out", str(tmp_path / "x.onnx")])
    assert code == 2
    assert 'pip install -e ".[export]"' in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
