"""Measures the data pipeline's throughput on synthetic 1280x720 JPEGs.

Prints samples per second for the per-sample train-mode transform on one core
(read, decode, augment, warp, normalise, targets) and for the full loader with
0 (in-process) and N worker processes.

    python scripts/bench_data.py [--root /tmp/bench_mpii] [--num 256] [--workers 2] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from hrnet_jax.config import get_config, override
from hrnet_jax.data.loader import build_loader
from hrnet_jax.data.mpii import MPIIDataset
from hrnet_jax.data.synthetic import ensure_synthetic_mpii


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "hrnet_jax_bench_mpii"))
    parser.add_argument("--num", type=int, default=256, help="training images to generate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--config", default="hrnet_w32", help="preset giving input and heatmap sizes")
    args = parser.parse_args()

    start = time.perf_counter()
    ensure_synthetic_mpii(args.root, num_train=args.num, num_valid=16, seed=0, image_size=(1280, 720))
    print(f"dataset: {args.num} images of 1280x720 ready in {time.perf_counter() - start:.1f} s")
    cfg = override(get_config(args.config), [f"dataset.root={args.root}"])

    dataset = MPIIDataset(args.root, "train", True, cfg)
    dataset.load(0)  # warm up OpenCV
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset.load(i, epoch=1)
    per_sample = len(dataset) / (time.perf_counter() - start)
    print(f"per-sample train transform, one core: {per_sample:.1f} samples/s "
          f"({1000 / per_sample:.1f} ms/sample)")

    for workers in sorted({0, args.workers}):
        with build_loader(cfg, "train", batch_size=args.batch, seed=0, workers=workers) as loader:
            it = iter(loader)
            next(it)  # start-up and the first batch are not counted
            start = time.perf_counter()
            count = 0
            for batch in it:
                count += len(batch[0])
            rate = count / (time.perf_counter() - start)
        print(f"loader, {workers} worker(s), batch {args.batch}: {rate:.1f} samples/s "
              f"over {count} samples")


if __name__ == "__main__":
    main()
