"""Evaluates a trained model on the MPII validation set with the flip test.

    python scripts/test.py --config hrnet_w32 --checkpoint PATH [--data-root DIR] [--out DIR]

PATH is a training work directory (its best model, else its newest
checkpoint), an exported or converted model, or one checkpoint directory.
Prints the PCKh table and writes OUT/pred.mat (1-based (N, 16, 2)
predictions, as the reference writes them) and OUT/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from hrnet_jax.train import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="work directory, exported model or checkpoint directory")
    parser.add_argument("--out", default=None, help="output directory (default: PATH/test)")
    parser.add_argument("--no-flip", action="store_true", help="disable the flip test")
    parser.add_argument("--no-post-process", action="store_true",
                        help="disable the quarter-pixel refinement")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    cli.enable_compilation_cache(args.compilation_cache)
    from hrnet_jax.data.workers import WorkerError
    from hrnet_jax.metrics import format_pckh_table
    from hrnet_jax.train.checkpoint import load_for_evaluation
    from hrnet_jax.train.evaluate import validate, write_results
    from hrnet_jax.train.loop import prepare_dataset

    try:
        cfg = cli.config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    try:
        variables, saved, source = load_for_evaluation(args.checkpoint)
        if saved is not None:
            # The network is the one the checkpoint was trained as; data and test
            # settings come from the command line.
            cfg = dataclasses.replace(cfg, model=saved.model)
        print(f"=> {source}")
        prepare_dataset(cfg)
        result = validate(cfg, variables, flip_test=False if args.no_flip else None,
                          post_process=False if args.no_post_process else None,
                          show_progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    print(f"Test: Loss {result.loss:.5f}\tAccuracy {result.accuracy:.3f}")
    print(format_pckh_table(result.table, cfg.model.name))
    out = args.out or os.path.join(args.checkpoint, "test")
    mat, js = write_results(result, out, {
        "checkpoint": os.path.abspath(args.checkpoint), "source": source,
        "flip_test": not args.no_flip and cfg.test.flip_test,
        "post_process": not args.no_post_process and cfg.test.post_process})
    print(f"=> {mat}\n=> {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
