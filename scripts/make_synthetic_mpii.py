"""Writes a synthetic MPII-format dataset (images/, annot/*.json, annot/gt_valid.mat).

    python scripts/make_synthetic_mpii.py --out data/synthetic_mpii --num-train 2000 \
        --num-valid 500 --seed 0 [--image-size 256 | --image-size 1280x720]
"""

from __future__ import annotations

import argparse
import time

from hrnet_jax.config import parse_image_size
from hrnet_jax.data.synthetic import ensure_synthetic_mpii, write_synthetic_mpii


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output root (MPII layout)")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-valid", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=parse_image_size, default=(256, 256), help="N or WxH pixels")
    parser.add_argument("--processes", type=int, default=None,
                        help="rendering processes (default: one per core for 64 images or more); "
                             "the files do not depend on it")
    parser.add_argument("--force", action="store_true",
                        help="write even if the directory holds another dataset (no completion marker)")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.force:
        write_synthetic_mpii(args.out, num_train=args.num_train, num_valid=args.num_valid,
                             seed=args.seed, image_size=args.image_size,
                             processes=args.processes)
    else:
        ensure_synthetic_mpii(args.out, num_train=args.num_train, num_valid=args.num_valid,
                              seed=args.seed, image_size=args.image_size,
                              processes=args.processes)
    print(f"{args.out}: {args.num_train} train + {args.num_valid} valid images of "
          f"{args.image_size[0]}x{args.image_size[1]} ready in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
