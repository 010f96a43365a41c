"""Writes the golden outputs of the reference PyTorch HRNet that specs/test_golden_outputs.py checks.

Run with torch installed, from the repository root::

  git --git-dir=PATH/TO/deep-high-resolution-net.pytorch/.git show \\
      6f69e4676ad8d43d0d61b64b1b9726f0c369e7b1:lib/models/pose_hrnet.py > /tmp/pose_hrnet.py
  python specs/golden/make_golden.py --reference-model /tmp/pose_hrnet.py --out specs/golden

The reference model file is imported from where it lies, never copied here.
For each model of GOLDEN_MODELS it builds the reference's
``PoseHighResolutionNet`` from a reference-format cfg dict, draws random
weights, BatchNorm statistics and a random input, and writes ``NAME.npz``:

  ``reference_cfg``        the cfg dict given to the reference, as JSON
  ``base``                 '' or the model whose state_dict this one extends
  ``state_dict_layout``    JSON list of [name, shape]: every state_dict entry
                           but num_batches_tracked, in order (with ``base``:
                           only the entries that differ from the base's)
  ``state_dict_values``    float16, those entries flattened and concatenated
  ``input``                float16 (N, 3, H, W)
  ``eval_output``          float32, the ``model.eval()`` forward of ``input``
  ``train_output``         float32, the ``model.train()`` forward of ``input``
  ``running_stats_layout`` JSON list of [name, shape] of every running_mean
                           and running_var
  ``running_stats_values`` float32, their values after that one train-mode
                           forward, flattened and concatenated

It also writes ``reference_state_dicts.json``, which specs/test_convert.py
checks the weight conversion against: for each of the full-size
networks of STATE_DICT_MODELS, the cfg dict given to the reference, its
parameter count (``model.parameters()``, so without running statistics and
num_batches_tracked) and its whole state_dict as an ordered list of
[name, shape], num_batches_tracked included; names and shapes only, no values.

Every weight and input is drawn as a float16 number and given to the
reference as float32, so the float16 files hold exactly what it computed from.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import pathlib
import sys
import warnings

import numpy as np
import torch

REFERENCE_COMMIT = "6f69e4676ad8d43d0d61b64b1b9726f0c369e7b1"
# git blob of lib/models/pose_hrnet.py at that commit.
REFERENCE_BLOB = "09ff346a1b20ca9e9078714132c01123d1b0b4b1"


def _stage(modules: int, blocks: int, channels: tuple[int, ...]) -> dict:
    return {"NUM_MODULES": modules, "NUM_BRANCHES": len(channels), "BLOCK": "BASIC",
            "NUM_BLOCKS": [blocks] * len(channels), "NUM_CHANNELS": list(channels),
            "FUSE_METHOD": "SUM"}


def _reference_cfg(num_joints: int, final_kernel: int, modules: tuple[int, int, int],
                   blocks: int, widths: tuple[int, int, int, int] = (8, 16, 32, 64)) -> dict:
    return {"MODEL": {"NAME": "pose_hrnet", "NUM_JOINTS": num_joints, "EXTRA": {
        "PRETRAINED_LAYERS": ["*"],
        "FINAL_CONV_KERNEL": final_kernel,
        "STAGE2": _stage(modules[0], blocks, widths[:2]),
        "STAGE3": _stage(modules[1], blocks, widths[:3]),
        "STAGE4": _stage(modules[2], blocks, widths),
    }}}


# name -> (reference cfg, input shape (N, 3, H, W), seed, base model or None).
# w8_mpii is hrnet_w32's topology (1, 4, 3 modules of 4 BASIC blocks per
# branch) at widths 8/16/32/64, i.e. the hrnet_w8 preset. w8_mpii_final3x3
# shares its weights and input and has its own 3x3 final layer. w8_coco is
# 17 joints on a taller-than-wide input (as 256x192) with one module per
# stage of 2 blocks per branch, to keep the file small.
GOLDEN_MODELS = {
    "w8_mpii": (_reference_cfg(16, 1, (1, 4, 3), 4), (2, 3, 64, 64), 1, None),
    "w8_mpii_final3x3": (_reference_cfg(16, 3, (1, 4, 3), 4), (2, 3, 64, 64), 2, "w8_mpii"),
    "w8_coco": (_reference_cfg(17, 1, (1, 1, 1), 2), (2, 3, 96, 64), 3, None),
}
# name -> reference cfg of the full-size networks whose state_dict names and
# shapes (no values) go to STATE_DICTS_FILE: the reference's experiments
# HRNet-W32 and W48 on MPII at 256x256 and W32 on COCO at 256x192 (stages of
# 1, 4, 3 modules of 4 BASIC blocks per branch, 1x1 final layer; the input
# size does not change the state_dict). The presets hrnet_w32, hrnet_w48 and
# hrnet_w32_coco of hrnet_jax/config.py.
STATE_DICT_MODELS = {
    "hrnet_w32_256x256_mpii": _reference_cfg(16, 1, (1, 4, 3), 4, (32, 64, 128, 256)),
    "hrnet_w48_256x256_mpii": _reference_cfg(16, 1, (1, 4, 3), 4, (48, 96, 192, 384)),
    "hrnet_w32_256x192_coco": _reference_cfg(17, 1, (1, 4, 3), 4, (32, 64, 128, 256)),
}
STATE_DICTS_FILE = "reference_state_dicts.json"
CALIBRATION_BATCH = 8
# Kernels, nearly all of the weights, are drawn on a grid of 4 significant
# bits: still random, and the float16 files compress to about half.
KERNEL_SIGNIFICANT_BITS = 4


def _import_reference(path: str):
    """Imports the reference model file, refusing any but the one of REFERENCE_COMMIT."""
    content = pathlib.Path(path).read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    if blob != REFERENCE_BLOB:
        raise SystemExit(f"--reference-model {path!r}: git blob {blob}, expected {REFERENCE_BLOB} "
                         f"(lib/models/pose_hrnet.py at {REFERENCE_COMMIT})")
    spec = importlib.util.spec_from_file_location("reference_pose_hrnet", path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # its `is '*'` comparison
        spec.loader.exec_module(module)
    return module


def _float16(array: np.ndarray, significant_bits: int | None = None) -> np.ndarray:
    """``array`` rounded to float16, first to ``significant_bits`` bits if given."""
    array = np.asarray(array, np.float64)
    if significant_bits is not None:
        mantissa, exponent = np.frexp(array)
        array = np.ldexp(np.round(mantissa * 2.0**significant_bits) / 2.0**significant_bits,
                         exponent)
    return array.astype(np.float16)


def _draw_weights(model: torch.nn.Module, rng: np.random.Generator, keys: list[str]) -> None:
    """He-scaled kernels, BatchNorm weight U[0.5, 1.5], biases N(0, 0.1), all float16 values.

    Drawn from ``rng`` in state_dict order; running statistics are left alone.
    """
    state = model.state_dict()
    with torch.no_grad():
        for key in keys:
            tensor = state[key]
            if tensor.ndim == 4:
                fan_in = int(np.prod(tensor.shape[1:]))
                value = _float16(rng.normal(0.0, np.sqrt(2.0 / fan_in), tensor.shape),
                                 KERNEL_SIGNIFICANT_BITS)
            elif key.endswith(".weight"):
                value = rng.uniform(0.5, 1.5, tensor.shape)
            elif key.endswith(".bias"):
                value = rng.normal(0.0, 0.1, tensor.shape)
            else:
                continue
            tensor.copy_(torch.from_numpy(_float16(value).astype(np.float32)))


def _draw_statistics(model: torch.nn.Module, rng: np.random.Generator,
                     calibration: torch.Tensor) -> None:
    """Running statistics near those of the activations, so eval mode stays in range.

    Running statistics of a fixed scale let activations grow without bound
    through the residual stack in eval mode. Instead, in one eval-mode forward
    of a calibration batch, each BatchNorm in turn first measures its input's
    per-channel mean and (unbiased) variance and takes as running statistics
    mean + N(0, 0.1) * std and var * U[0.5, 1.5] (drawn in forward order), so
    that every later BatchNorm is measured on what the perturbed earlier ones
    produce.
    """

    def calibrate(bn: torch.nn.BatchNorm2d, inputs: tuple) -> None:
        x = inputs[0].double()
        mean = x.mean(dim=(0, 2, 3)).numpy()
        var = x.var(dim=(0, 2, 3), unbiased=True).numpy()
        mean = mean + rng.normal(0.0, 0.1, mean.shape) * np.sqrt(var)
        var = var * rng.uniform(0.5, 1.5, var.shape)
        bn.running_mean.copy_(torch.from_numpy(_float16(mean).astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(_float16(var).astype(np.float32)))

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    model.eval()
    with torch.no_grad():
        model(calibration)
    for hook in hooks:
        hook.remove()


def _health(name: str, output: np.ndarray) -> str:
    """Refuses outputs dominated by a few values; returns a one-line summary."""
    flat = np.abs(output.ravel())
    top = np.sort(flat)[::-1][: max(1, flat.size // 100)]
    share = float(np.sum(top**2) / np.sum(flat**2))
    std = float(output.std())
    if not (0.1 < std < 100.0) or share > 0.2:
        raise SystemExit(f"{name}: unhealthy output (std {std:.3g}, top 1% of entries hold "
                         f"{share:.0%} of the energy); choose other scales or seeds")
    return f"std {std:.3g}, max |x| {flat.max():.3g}, top 1% holds {share:.1%} of the energy"


def _pack(prefix: str, tensors: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    """Named arrays as one flat array and a JSON list of [name, shape] (two zip entries)."""
    values = np.concatenate([np.ravel(v) for v in tensors.values()])
    flat = values.astype(dtype)
    if not np.array_equal(flat.astype(values.dtype), values):
        raise AssertionError(f"{prefix}: values do not survive conversion to {np.dtype(dtype)}")
    layout = [[k, list(v.shape)] for k, v in tensors.items()]
    return {f"{prefix}_layout": np.array(json.dumps(layout)), f"{prefix}_values": flat}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _forward(model: torch.nn.Module, x: torch.Tensor, train: bool):
    model.train(train)
    with torch.no_grad():
        out = model(x)
    stats = {k: v.clone() for k, v in model.state_dict().items()
             if k.endswith(("running_mean", "running_var"))}
    return out, stats


def make(reference, name: str, out_dir: pathlib.Path, made: dict) -> None:
    cfg, shape, seed, base = GOLDEN_MODELS[name]
    rng = np.random.default_rng(seed)
    model = reference.PoseHighResolutionNet(cfg)
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if base is None:
        _draw_weights(model, rng, keys)
        calibration = torch.from_numpy(
            _float16(rng.normal(size=(CALIBRATION_BATCH, *shape[1:]))).astype(np.float32))
        _draw_statistics(model, rng, calibration)
        x16 = _float16(rng.normal(size=shape))
        stored = keys
    else:
        # The base's weights and statistics as drawn, before its train-mode forward.
        base_state, x16 = made[base]
        stored = [k for k in keys if k.startswith("final_layer.")
                  or base_state[k].shape != model.state_dict()[k].shape]
        shared = {k: v for k, v in base_state.items() if k not in stored}
        model.load_state_dict(shared, strict=False)
        _draw_weights(model, rng, stored)
    initial = copy.deepcopy(model.state_dict())
    x = torch.from_numpy(x16.astype(np.float32))

    eval_out, _ = _forward(model, x, train=False)
    train_out, stats = _forward(model, x, train=True)

    # The same in float64 from the same values: how far float32 is from exact.
    model64 = reference.PoseHighResolutionNet(cfg).double()
    model64.load_state_dict(initial)
    eval64, _ = _forward(model64, x.double(), train=False)
    train64, stats64 = _forward(model64, x.double(), train=True)
    stat_error = max(_relative(stats[k].numpy(), stats64[k].numpy()) for k in stats)

    summary = (f"  eval:  {_health(name + ' eval', eval_out.numpy())}\n"
               f"  train: {_health(name + ' train', train_out.numpy())}\n"
               f"  float32 vs float64 max relative difference: eval "
               f"{_relative(eval_out.numpy(), eval64.numpy()):.1e}, train "
               f"{_relative(train_out.numpy(), train64.numpy()):.1e}, running statistics "
               f"{stat_error:.1e}")
    arrays = {
        "reference_cfg": np.array(json.dumps(cfg, sort_keys=True)),
        "base": np.array(base or ""),
        "input": x16,
        "eval_output": eval_out.numpy().astype(np.float32),
        "train_output": train_out.numpy().astype(np.float32),
    }
    arrays.update(_pack("state_dict", {k: initial[k].numpy() for k in stored}, np.float16))
    arrays.update(_pack("running_stats", {k: v.numpy() for k, v in stats.items()}, np.float32))
    assert np.array_equal(x16.astype(np.float32), x.numpy())
    path = out_dir / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    made[name] = (initial, x16)
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, input {shape}, "
          f"output {tuple(eval_out.shape)}\n{summary}")


def write_state_dicts(reference, out_dir: pathlib.Path) -> None:
    """The ordered state_dict names and shapes of STATE_DICT_MODELS, as one JSON file."""
    networks = {}
    for name, cfg in STATE_DICT_MODELS.items():
        model = reference.PoseHighResolutionNet(cfg)
        networks[name] = {
            "reference_cfg": cfg,
            "parameters": sum(p.numel() for p in model.parameters()),
            "state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        }
    # One state_dict entry a line, so that the file reads and diffs line by line.
    lines = ["{",
             f'  "reference_commit": {json.dumps(REFERENCE_COMMIT)},',
             f'  "reference_blob": {json.dumps(REFERENCE_BLOB)},',
             '  "networks": {']
    for i, (name, net) in enumerate(networks.items()):
        lines += [f"    {json.dumps(name)}: {{",
                  f'      "reference_cfg": {json.dumps(net["reference_cfg"], sort_keys=True)},',
                  f'      "parameters": {net["parameters"]},',
                  '      "state_dict": [']
        entries = [json.dumps(entry, separators=(",", ":")) for entry in net["state_dict"]]
        lines += [",\n".join(entries), "      ]", "    }" + ("," if i + 1 < len(networks) else "")]
    lines += ["  }", "}", ""]
    text = "\n".join(lines)
    if json.loads(text)["networks"] != networks:
        raise AssertionError(f"{STATE_DICTS_FILE}: does not read back as written")
    path = out_dir / STATE_DICTS_FILE
    path.write_text(text)
    print(f"{path}: {path.stat().st_size / 1e3:.0f} kB, " + ", ".join(
        f"{name} {len(net['state_dict'])} entries, {net['parameters']} parameters"
        for name, net in networks.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-model", required=True,
                        help="lib/models/pose_hrnet.py of the reference at commit "
                             f"{REFERENCE_COMMIT}")
    parser.add_argument("--out", required=True,
                        help=f"directory to write NAME.npz and {STATE_DICTS_FILE} into")
    args = parser.parse_args(argv)
    torch.manual_seed(0)  # nothing here draws from torch; fixed all the same
    torch.set_num_threads(1)
    reference = _import_reference(args.reference_model)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    made: dict = {}
    for name in GOLDEN_MODELS:
        make(reference, name, out_dir, made)
    write_state_dicts(reference, out_dir)


if __name__ == "__main__":
    main()
