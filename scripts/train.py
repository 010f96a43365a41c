"""Trains HRNet for top-down pose estimation; rerun the same command to resume.

    python scripts/train.py --config hrnet_w32 [--data-root data/mpii] [--workdir DIR]
    python scripts/train.py --config hrnet_w32_coco --data-root data/coco
    python scripts/train.py --config hrnet_quickstart --dataset synthetic   # any machine
    python scripts/train.py --config hrnet_quickstart_coco                  # any machine

SIGTERM (a preemptible machine about to stop) or Ctrl-C ends the run after
the current step with a checkpoint (exit status 0); the same command resumes.
A second Ctrl-C interrupts at once.

Validation (flip test, the dataset's table: MPII PCKh, COCO AP) runs after
every epoch; the model with the best headline score (MPII Mean, COCO AP)
goes to WORKDIR/model_best and the last to WORKDIR/final_model, both
loadable by scripts/test.py and scripts/predict.py.
"""

from __future__ import annotations

import argparse
import os
import sys

from hrnet_jax import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_config_arguments(parser)
    parser.add_argument("--workdir", default=None,
                        help="where checkpoints, logs and models go "
                             "(default output/<dataset>/<config>)")
    parser.add_argument("--epochs", type=int, default=None, help="train.end_epoch")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps in all (smoke runs)")
    parser.add_argument("--pretrained", default=None,
                        help="reference ImageNet HRNet .pth to initialise the backbone from "
                             "(model.pretrained)")
    cli.add_distributed_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = cli.parse_and_start(parser, argv)

    from hrnet_jax.config import override
    from hrnet_jax.data.registry import dataset_class
    from hrnet_jax.data.workers import WorkerError
    from hrnet_jax.train.loop import TrainingDiverged, train

    try:
        cfg = cli.config_from_args(args)
        if args.epochs is not None:
            cfg = override(cfg, {"train.end_epoch": args.epochs})
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    workdir = args.workdir or cli.default_workdir(args, cfg)
    try:
        result = train(cfg, workdir, max_steps=args.max_steps, pretrained=args.pretrained,
                       show_progress=not args.no_progress)
    except FileNotFoundError as e:
        # The dataset's message says where its files go and which generated set
        # runs the same code path without them.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except WorkerError as e:
        print(f"error: {e}\nRerun the same command to resume from the newest checkpoint.",
              file=sys.stderr)
        return 4
    except Exception as e:
        cli.exit_if_a_process_was_lost(
            e, "Rerun every process with the same command to resume from the newest checkpoint.")
        raise
    import jax

    if jax.process_index() != 0:
        return 0
    if result.stopped_by:
        print(f"stopped by {result.stopped_by} at step {result.step} after writing a checkpoint; "
              "run the same command to resume")
        return 0
    best = "n/a" if result.best_perf is None else f"{result.best_perf:.3f}"
    where = os.path.relpath(result.workdir)
    headline = dataset_class(cfg.dataset.name).headline_metric
    print(f"done: step {result.step}, best {headline} {best}, models in "
          f"{result.workdir if where.startswith('..') else where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
