"""Detects the keypoints of people in images or a video with a trained model.

    python scripts/predict.py --checkpoint DIR IMAGE... [--box x,y,w,h] [--out DIR]
    python scripts/predict.py --checkpoint DIR --video IN.mp4 [--out OUT.mp4] [--boxes DETECTIONS.json]

DIR is an exported or converted model, or a training work directory (its
best model, else its newest checkpoint).

Images: for each writes ``<name>.json`` (keypoints as x, y, score in image
pixels, one list per box) and ``<name>_pose.png`` (the skeleton drawn, left
and right limbs in different colours, marker size growing with the score).
Without ``--box`` the whole image is taken as one person.

Video (any file OpenCV reads): writes OUT (default ``<IN>_pose.mp4``) with
the skeletons drawn and OUT with ``.jsonl``: one JSON line per person and
frame. Boxes come from ``--boxes`` (COCO results format, ``image_id`` = frame
index from 0) or are the whole frame. ``--backend onnx`` runs an ONNX export
of the model with onnxruntime (``pip install -e ".[export]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import cv2

from hrnet_jax.inference import PoseEstimator, draw_keypoints, read_image
from hrnet_jax.workdir import load_for_evaluation


def _box(text: str) -> list[float]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected x,y,w,h")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected four numbers") from None


def _images(args: argparse.Namespace, estimator: PoseEstimator) -> int:
    out = args.out or "predictions"
    os.makedirs(out, exist_ok=True)
    names = estimator.joints.joint_names
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
        json_path = os.path.join(out, f"{stem}.json")
        with open(json_path, "w") as f:
            json.dump(record, f, indent=1)
        picture = draw_keypoints(image, keypoints, estimator.joints, min_score=args.min_score)
        picture_path = os.path.join(out, f"{stem}_pose.png")
        cv2.imwrite(picture_path, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        print(f"{path}: {len(keypoints)} person(s) -> {json_path}, {picture_path}")
    return status


def _video(args: argparse.Namespace, estimator: PoseEstimator) -> int:
    from hrnet_jax.video import estimate_video

    out = args.out or os.path.splitext(args.video)[0] + "_pose.mp4"
    result = estimate_video(estimator, args.video, out, boxes_path=args.boxes,
                            batch_size=args.batch_size, min_score=args.min_score,
                            box_min_score=args.box_min_score, progress=not args.no_progress)
    note = " (the video ended before the frame count its header gives)" if result.ended_early else ""
    print(f"{args.video}: {result.frames} frames, {result.people} person crops in "
          f"{result.seconds:.1f} s ({result.frames_per_second:.1f} frames/s){note}\n"
          f"=> {result.video_path}\n=> {result.keypoints_path}")
    return 0


def _onnx_heatmaps(variables, cfg, flip_test: bool, directory: str):
    from hrnet_jax.export import load_onnx, to_onnx

    path = to_onnx(variables, cfg, os.path.join(directory, "model.onnx"), flip_test=flip_test)
    return load_onnx(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", metavar="IMAGE")
    parser.add_argument("--checkpoint", required=True,
                        help="exported or converted model, or a training work directory")
    parser.add_argument("--box", type=_box, action="append", default=None,
                        help="person box x,y,w,h in pixels, used for every image (repeatable)")
    parser.add_argument("--video", default=None, help="a video file instead of images")
    parser.add_argument("--boxes", default=None, metavar="DETECTIONS.json",
                        help="video: person boxes per frame (COCO results, image_id = frame)")
    parser.add_argument("--box-min-score", type=float, default=0.0,
                        help="video: boxes scoring below this are left out")
    parser.add_argument("--out", default=None,
                        help="output directory for images (default predictions), output video "
                             "file for --video (default <video>_pose.mp4)")
    parser.add_argument("--backend", choices=("jax", "onnx"), default="jax",
                        help="run the JAX model or an ONNX export of it with onnxruntime")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="video: person crops per network call, across frames")
    parser.add_argument("--no-flip", action="store_true", help="disable the flip test")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="joints scoring below this are not drawn")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if bool(args.images) == bool(args.video):
        parser.error("give image files or --video, not both and not neither")
    if args.boxes and not args.video:
        parser.error("--boxes goes with --video (use --box for images)")

    try:
        variables, cfg, source = load_for_evaluation(args.checkpoint)
        if cfg is None:
            raise ValueError(f"{source} holds no configuration; give its training work "
                             "directory or an exported model")
        with tempfile.TemporaryDirectory() as tmp:
            heatmaps_fn = None
            if args.backend == "onnx":
                try:
                    heatmaps_fn = _onnx_heatmaps(variables, cfg, not args.no_flip, tmp)
                except ImportError as e:
                    print(f"error: --backend onnx needs the export extra "
                          f"(pip install -e \".[export]\"): {e}", file=sys.stderr)
                    return 2
            estimator = PoseEstimator(variables, cfg, flip_test=not args.no_flip,
                                      heatmaps_fn=heatmaps_fn)
            return _video(args, estimator) if args.video else _images(args, estimator)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
