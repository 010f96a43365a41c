"""Evaluates a trained model on its dataset's validation split with the flip test.

    python scripts/test.py --config hrnet_w32 --checkpoint PATH [--data-root DIR] [--out DIR]
    python scripts/test.py --config hrnet_w32_coco --checkpoint PATH --detections FILE

PATH is a training work directory (its best model, else its newest
checkpoint), an exported or converted model, one checkpoint directory, or a
reference .pth file (with torch); without --checkpoint, the config's
test.model_file (the reference's TEST.MODEL_FILE).
Prints the dataset's table (MPII PCKh, COCO AP) and writes OUT/results.json
with the dataset's prediction files: MPII OUT/pred.mat (1-based (N, 16, 2),
as the reference writes it), COCO OUT/results/keypoints_<set>_results_0.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from hrnet_jax import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_config_arguments(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="work directory, exported model, checkpoint directory or reference "
                             ".pth file (default: the config's test.model_file)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: PATH/test, or test/ beside a file)")
    parser.add_argument("--no-flip", action="store_true", help="disable the flip test")
    parser.add_argument("--decode", choices=("argmax", "reference", "dark"), default=None,
                        help="heatmap decoder (default test.decode: the reference's "
                             "quarter-pixel shift)")
    parser.add_argument("--no-post-process", action="store_true",
                        help="the reference's name for --decode argmax")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--detections", default=None, metavar="FILE",
                       help="COCO-style datasets: test on these detected person boxes (COCO "
                            "results JSON) instead of the ground-truth boxes")
    boxes.add_argument("--gt-boxes", action="store_true",
                       help="COCO-style datasets: test on the ground-truth boxes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_distributed_arguments(parser)
    args = cli.parse_and_start(parser, argv)

    from hrnet_jax.config import override
    from hrnet_jax.data.registry import prepare_dataset
    from hrnet_jax.data.workers import WorkerError
    from hrnet_jax.evaluation import validate, write_results
    from hrnet_jax.metrics import format_table
    from hrnet_jax.workdir import load_for_evaluation

    try:
        cfg = cli.config_from_args(args)
        if args.detections is not None:
            cfg = override(cfg, {"test.use_gt_bbox": False,
                                 "test.coco_bbox_file": args.detections})
        elif args.gt_boxes:
            cfg = override(cfg, {"test.use_gt_bbox": True})
        decode = "argmax" if args.no_post_process else args.decode
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    checkpoint = args.checkpoint or cfg.test.model_file
    if not checkpoint:
        parser.error("--checkpoint is required unless the config sets test.model_file")
    out = args.out or os.path.join(
        os.path.dirname(checkpoint) if os.path.isfile(checkpoint) else checkpoint, "test")
    try:
        variables, saved, source = load_for_evaluation(checkpoint, cfg)
        if saved is not None:
            # The network is the one the checkpoint was trained as; data and test
            # settings come from the command line.
            cfg = dataclasses.replace(cfg, model=saved.model)
        if cli.is_first_process():
            print(f"=> {source}")
        prepare_dataset(cfg)
        result = validate(cfg, variables, flip_test=False if args.no_flip else None,
                          decode=decode, output_dir=out,
                          show_progress=not args.no_progress and cli.is_first_process(),
                          log=print if cli.is_first_process() else None)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except Exception as e:
        cli.exit_if_a_process_was_lost(e, "Rerun every process.")
        raise
    import jax

    if jax.process_index() != 0:  # every process evaluated its share; the first reports
        return 0
    print(f"Test: Loss {result.loss:.5f}\tAccuracy {result.accuracy:.3f}")
    if result.table is not None:
        print(format_table(result.table, cfg.model.name))
    path = write_results(result, out, {
        "checkpoint": os.path.abspath(checkpoint), "source": source,
        "dataset": cfg.dataset.name, "test_set": cfg.dataset.test_set,
        "flip_test": not args.no_flip and cfg.test.flip_test,
        "decode": decode or cfg.test.decode,
        "boxes": "ground truth" if cfg.test.use_gt_bbox else cfg.test.coco_bbox_file})
    print(f"=> predictions and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
