"""Detects the keypoints of people in images with an exported model.

    python scripts/predict.py --checkpoint DIR IMAGE... [--box x,y,w,h] [--out DIR]

DIR is an exported or converted model, or a training work directory (its
best model, else its newest checkpoint).

For each image writes ``<name>.json`` (keypoints as x, y, score in image
pixels, one list per box) and ``<name>_pose.png`` (the skeleton drawn, left
and right limbs in different colours, marker size growing with the score).
Without ``--box`` the whole image is taken as one person.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import cv2

from hrnet_jax.inference import PoseEstimator, draw_keypoints, read_image
from hrnet_jax.train.checkpoint import load_for_evaluation


def _box(text: str) -> list[float]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected x,y,w,h")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected four numbers") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--checkpoint", required=True,
                        help="exported or converted model, or a training work directory")
    parser.add_argument("--box", type=_box, action="append", default=None,
                        help="person box x,y,w,h in pixels, used for every image (repeatable)")
    parser.add_argument("--out", default="predictions", help="output directory")
    parser.add_argument("--no-flip", action="store_true", help="disable the flip test")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="joints scoring below this are not drawn")
    args = parser.parse_args(argv)

    try:
        variables, cfg, source = load_for_evaluation(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg is None:
        print(f"error: {source} holds no configuration; give its training work directory or "
              "an exported model", file=sys.stderr)
        return 2
    estimator = PoseEstimator(variables, cfg, flip_test=not args.no_flip)
    names = estimator.joints.joint_names
    os.makedirs(args.out, exist_ok=True)
    status = 0
    for path in args.images:
        try:
            image = read_image(path)
            keypoints = estimator(image, args.box)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        record = {
            "image": path,
            "boxes": args.box,
            "joint_names": list(names),
            "keypoints": keypoints.round(3).tolist(),
        }
        json_path = os.path.join(args.out, f"{stem}.json")
        with open(json_path, "w") as f:
            json.dump(record, f, indent=1)
        picture = draw_keypoints(image, keypoints, estimator.joints, min_score=args.min_score)
        picture_path = os.path.join(args.out, f"{stem}_pose.png")
        cv2.imwrite(picture_path, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        print(f"{path}: {len(keypoints)} person(s) -> {json_path}, {picture_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
