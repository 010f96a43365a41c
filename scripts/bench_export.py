"""Times the export of a model and its heatmaps in onnxruntime against JAX, on the CPU.

    python scripts/bench_export.py [--config hrnet_w32] [--batch 8] [--seconds 10]
    python scripts/bench_export.py --checkpoint DIR

For a preset (with random variables at the scale of trained ones) or a
saved model, prints the ONNX export time and file size, the StableHLO export
time, then images per second of the jitted JAX network (variables as
arguments, as PoseEstimator runs it), of the StableHLO file and of the ONNX
file in an onnxruntime CPU session, all on the same random batch, and the
largest differences from the JAX heatmaps. Each speed is the median time
per call over at least ``--seconds``, the three taking turns call by call
(so a change in the machine's load falls on all alike), after one warm-up
call each (printed separately: JAX's includes compiling).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from hrnet_jax import config as config_lib
from hrnet_jax.export import jax_heatmaps, load_onnx, load_stablehlo, to_onnx, to_stablehlo
from hrnet_jax.train.state import trained_scale_variables
from hrnet_jax.workdir import load_for_evaluation


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _interleaved(runtimes: dict[str, Callable[[], Any]], seconds: float
                 ) -> dict[str, tuple[float, float, int]]:
    """Per runtime: (first call seconds, median seconds per call, calls timed).

    The runtimes take turns call by call, so that a change in the load of a
    shared machine falls on all of them alike.
    """
    first = {}
    for label, fn in runtimes.items():
        start = time.perf_counter()
        np.asarray(fn())
        first[label] = time.perf_counter() - start
    times: dict[str, list[float]] = {label: [] for label in runtimes}
    begin = time.perf_counter()
    while min(len(t) for t in times.values()) < 3 or time.perf_counter() - begin < seconds:
        for label, fn in runtimes.items():
            start = time.perf_counter()
            np.asarray(fn())
            times[label].append(time.perf_counter() - start)
    return {label: (first[label], statistics.median(t), len(t)) for label, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="hrnet_w32", help="a preset (random variables)")
    parser.add_argument("--checkpoint", default=None,
                        help="a saved model or work directory instead of --config")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="time the runtimes, taking turns, for at least this long")
    parser.add_argument("--flip-test", action="store_true", help="export with the flip test")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: its own choice)")
    args = parser.parse_args(argv)

    if args.checkpoint:
        variables, cfg, source = load_for_evaluation(args.checkpoint)
        if cfg is None:
            print(f"error: {source} holds no configuration", file=sys.stderr)
            return 2
        name = source
    else:
        cfg = config_lib.get_config(args.config)
        variables = trained_scale_variables(cfg)
        name = f"{args.config} (random variables)"
    width, height = cfg.model.image_size
    images = np.random.default_rng(0).standard_normal((args.batch, 3, height, width), np.float32)
    cpu = platform.processor() or platform.machine()
    print(f"{name}: {width}x{height} input, batch {args.batch}, flip test "
          f"{'on' if args.flip_test else 'off'}; {os.cpu_count()} CPUs ({cpu}), "
          f"jax {jax.__version__}, onnxruntime {_version('onnxruntime')}")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        onnx_path = to_onnx(variables, cfg, os.path.join(tmp, "model.onnx"),
                            flip_test=args.flip_test)
        onnx_seconds = time.perf_counter() - start
        start = time.perf_counter()
        hlo_path = to_stablehlo(variables, cfg, os.path.join(tmp, "model.stablehlo"),
                                flip_test=args.flip_test)
        hlo_seconds = time.perf_counter() - start
        print(f"export: ONNX {onnx_seconds:.1f} s ({os.path.getsize(onnx_path) / 2**20:.1f} MiB), "
              f"StableHLO {hlo_seconds:.1f} s ({os.path.getsize(hlo_path) / 2**20:.1f} MiB)")

        runtimes = {
            "JAX (jit)": jax_heatmaps(variables, cfg, flip_test=args.flip_test),
            "StableHLO": load_stablehlo(hlo_path),
            "onnxruntime": load_onnx(onnx_path, threads=args.threads),
        }
        timings = _interleaved({label: (lambda fn=fn: fn(images))
                                for label, fn in runtimes.items()}, args.seconds)
        outputs = {label: np.asarray(fn(images), np.float64) for label, fn in runtimes.items()}
    for label, (first, seconds, calls) in timings.items():
        print(f"{label:12s} {args.batch / seconds:7.2f} images/s ({seconds * 1e3:.0f} ms per "
              f"batch, median of {calls}; first call {first:.1f} s)")
    reference = outputs["JAX (jit)"]
    for label in ("StableHLO", "onnxruntime"):
        diff = float(np.max(np.abs(outputs[label] - reference)))
        print(f"{label} vs JAX: max abs diff {diff:.3g} (relative "
              f"{diff / max(float(np.max(np.abs(reference))), 1e-30):.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
