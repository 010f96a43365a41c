"""Generates the synthetic COCO-format keypoint set (and its person detections).

    python scripts/make_synthetic_coco.py --out data/synthetic_coco --num-train 1200 --num-valid 200

Writes ``OUT/images/{train2017,val2017}``, ``OUT/annotations/person_keypoints_*.json``
and ``OUT/person_detection_results/synthetic_val2017_detections.json``; an
existing complete set with the same parameters is kept.
"""

from __future__ import annotations

import argparse
import sys
import time

from hrnet_jax.data.synthetic_coco import ensure_synthetic_coco


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/synthetic_coco", help="output root")
    parser.add_argument("--num-train", type=int, default=1200, help="training images")
    parser.add_argument("--num-valid", type=int, default=200, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", default="320x256", help="WIDTHxHEIGHT of each image")
    parser.add_argument("--processes", type=int, default=None,
                        help="rendering processes (default: one per core for 64 images or more); "
                             "the files do not depend on it")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        ensure_synthetic_coco(args.out, num_train=args.num_train, num_valid=args.num_valid,
                              seed=args.seed, image_size=args.image_size,
                              processes=args.processes)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"=> {args.out} ({args.num_train} + {args.num_valid} images) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
