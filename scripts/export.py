"""Exports a trained model as one file that runs without this package: ONNX or StableHLO.

    python scripts/export.py --checkpoint DIR --format onnx --out hrnet.onnx [--batch-size N] [--flip-test]
    python scripts/export.py --checkpoint DIR --format stablehlo --out pose_hrnet.stablehlo

DIR is an exported or converted model, a training work directory (its best
model, else its newest checkpoint) or a checkpoint directory inside one. The
file maps ``images`` (N, 3, H, W) float32, crops normalised with the ImageNet
mean and std, to ``heatmaps`` (N, J, H/4, W/4) float32; N is any batch unless
``--batch-size`` fixes it, and ``--flip-test`` fuses the flip test in. After
writing, the file is run on a random batch next to the JAX model and the
largest difference printed. ONNX needs the export extra
(``pip install -e ".[export]"``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hrnet_jax.export import FORMATS, MissingDependencyError, check_export, to_onnx, to_stablehlo
from hrnet_jax.workdir import load_for_evaluation


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.1f} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="exported or converted model, training work directory, or "
                             "checkpoint directory")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--batch-size", type=_positive, default=None,
                        help="a fixed batch (default: any batch from one file)")
    parser.add_argument("--flip-test", action="store_true",
                        help="fuse the flip test (network on the mirrored crops too) into the file")
    parser.add_argument("--check-batch", type=_positive, default=None,
                        help="images in the random check batch (default: the fixed batch, else 2)")
    args = parser.parse_args(argv)

    try:
        variables, cfg, source = load_for_evaluation(args.checkpoint)
        if cfg is None:
            raise ValueError(f"{source} holds no configuration; give its training work "
                             "directory or an exported model")
        export = to_onnx if args.format == "onnx" else to_stablehlo
        start = time.perf_counter()
        path = export(variables, cfg, args.out, batch_size=args.batch_size,
                      flip_test=args.flip_test)
        seconds = time.perf_counter() - start
        check = check_export(path, variables, cfg, flip_test=args.flip_test,
                             batch=args.check_batch)
    except MissingDependencyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    width, height = cfg.model.image_size
    joints, (hw, hh) = cfg.model.num_joints, cfg.model.heatmap_size
    batch = "N" if args.batch_size is None else str(args.batch_size)
    print(f"loaded {source}")
    print(f"wrote {path} ({args.format}, {_size(os.path.getsize(path))}) in {seconds:.1f} s: "
          f"images ({batch}, 3, {height}, {width}) float32 -> heatmaps ({batch}, {joints}, "
          f"{hh}, {hw}) float32, flip test {'on' if args.flip_test else 'off'}")
    relative = check.max_abs_diff / check.max_abs if check.max_abs else check.max_abs_diff
    print(f"check on a random batch of {check.batch}: max |exported - JAX| = "
          f"{check.max_abs_diff:.3g} (largest heatmap value {check.max_abs:.3g}, relative "
          f"{relative:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
