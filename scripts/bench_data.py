"""Measures the data pipeline's throughput and its workers' memory on synthetic JPEGs.

Prints samples per second for the per-sample train-mode transform on one core
(read, decode, augment, warp, normalise, targets) and, for each worker count,
for the full loader, with the workers' peak resident memory and the shared
memory their finished batches hold.

    python scripts/bench_data.py [--root DIR] [--num 256] [--workers 0,2] [--batch 32]
        [--prefetch 2] [--image-size 1280x720]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from hrnet_jax.config import get_config, override, parse_image_size
from hrnet_jax.data.loader import build_loader
from hrnet_jax.data.mpii import MPIIDataset
from hrnet_jax.data.synthetic import ensure_synthetic_mpii


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a live process, in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "hrnet_jax_bench_mpii"))
    parser.add_argument("--num", type=int, default=256, help="training images to generate")
    parser.add_argument("--workers", default="0,2",
                        help="comma-separated worker counts to time (0: in this process)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prefetch", type=int, default=2, help="batches each worker builds ahead")
    parser.add_argument("--image-size", type=parse_image_size, default=(1280, 720),
                        help="synthetic image size, N or WxH (MPII photos are about 1280x720)")
    parser.add_argument("--config", default="hrnet_w32", help="preset giving input and heatmap sizes")
    args = parser.parse_args()
    worker_counts = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    width, height = args.image_size

    start = time.perf_counter()
    root = os.path.join(args.root, f"{width}x{height}")
    ensure_synthetic_mpii(root, num_train=args.num, num_valid=16, seed=0, image_size=(width, height))
    print(f"dataset: {args.num} images of {width}x{height} ready in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    cfg = override(get_config(args.config), [f"dataset.root={root}"])

    dataset = MPIIDataset(root, "train", True, cfg)
    dataset.load(0)  # warm up OpenCV
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset.load(i, epoch=1)
    per_sample = len(dataset) / (time.perf_counter() - start)
    print(f"per-sample train transform, one core: {per_sample:.1f} samples/s "
          f"({1000 / per_sample:.1f} ms/sample)", flush=True)

    for workers in worker_counts:
        with build_loader(cfg, "train", batch_size=args.batch, workers=workers,
                          prefetch=args.prefetch) as loader:
            it = iter(loader)
            first = next(it)  # start-up and the first batch are not counted
            batch_mb = sum(a.nbytes for a in first[:3]) / 2**20
            start = time.perf_counter()
            count = 0
            for batch in it:
                count += len(batch[0])
            rate = count / (time.perf_counter() - start)
            # The next epoch's batches are being built: the workers are at their busiest.
            next(iter(loader))
            peaks = [peak_rss_mb(pid) for pid in loader.worker_pids]
        memory = (f"; worker peak RSS {min(peaks):.0f}-{max(peaks):.0f} MiB each, plus up to "
                  f"{workers * args.prefetch} finished batches of {batch_mb:.1f} MiB in shared "
                  "memory" if peaks else "")
        print(f"loader, {workers} worker(s), batch {args.batch}: {rate:.1f} samples/s "
              f"over {count} samples{memory}", flush=True)


if __name__ == "__main__":
    main()
