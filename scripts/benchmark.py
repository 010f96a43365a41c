"""Measures train-step and evaluation throughput, compile time and MFU of HRNet.

    python scripts/benchmark.py [--configs hrnet_w32,hrnet_w48] [--batch-size 32]
        [--dtypes float32,bfloat16] [--steps 20] [--warmup 3] [--json results.json]

Times the real pmap'd train step (forward, backward, Adam) and the evaluation
step (flip test and post-processing unless --no-eval-flip) on every local
device, with synthetic inputs already on the devices. Compilation is timed
apart; warm-up calls are not timed. FLOPs are model FLOPs (the step's
convolutions and matrix products, counted from its jaxpr) and MFU comes from
a table of known peaks by device kind (n/a elsewhere, e.g. on CPU, unless
--peak-tflops is given). Prints each record as it is measured, then a
table; --json writes the records (after each one, so a cut-short run keeps
what it measured). ``--set model.scan=none|blocks|modules|all`` chooses how
the repeated parts of the network are compiled; ``--compilation-cache DIR``
turns JAX's persistent compilation cache on (a second run then shows the
cache-warm compile times).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="hrnet_w32,hrnet_w48",
                        help="comma-separated presets (hrnet_w32, hrnet_w48, any hrnet_w<C>)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per device per step")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="comma-separated compute dtypes: float32 (fp32), bfloat16 (bf16)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per step function")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before the timed ones")
    parser.add_argument("--image-size", default="256",
                        help="input size, N or WIDTHxHEIGHT, multiples of 32 (heatmaps are 1/4)")
    parser.add_argument("--eval-flip", action=argparse.BooleanOptionalAction, default=True,
                        help="evaluate with the flip test, as validation does (default on)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak TFLOP/s of one device for MFU (default: known GPUs by device "
                             "kind; bf16 dense, TF32 dense for float32)")
    parser.add_argument("--only", choices=("train", "eval"), default=None,
                        help="time only the train step or only the eval step")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config field in every config (repeatable)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the records here")
    parser.add_argument("--hlo-dir", default=None, metavar="DIR",
                        help="write each compiled program's optimised HLO (XLA's fusions and "
                             "loops) here, also for programs from the persistent cache")
    parser.add_argument("--compilation-cache", default="none", metavar="DIR",
                        help="JAX's persistent compilation cache directory ('none': off, the "
                             "default, so compile times are cold)")
    args = parser.parse_args(argv)

    from hrnet_jax import benchmark, cli

    cli.enable_compilation_cache(args.compilation_cache)

    options = dict(batch_size=args.batch_size, dtypes=args.dtypes, steps=args.steps,
                   warmup=args.warmup, image_size=args.image_size, peak_tflops=args.peak_tflops,
                   overrides=args.overrides)
    try:
        benchmark.plan_benchmark(args.configs, **options)
    except ValueError as e:
        parser.error(str(e))
    done: list = []

    def on_record(record) -> None:
        done.append(record)
        print(benchmark.format_record(record), flush=True)
        if args.json:  # rewritten after every record: a cut-short run keeps what it measured
            benchmark.write_json(args.json, done)

    records = benchmark.run_benchmark(
        args.configs, eval_flip=args.eval_flip, train=args.only != "eval",
        evaluate=args.only != "train", log=lambda line: print(line, file=sys.stderr, flush=True),
        on_record=on_record, hlo_dir=args.hlo_dir, **options)
    print(benchmark.format_table(records))
    if args.json:
        print(f"=> wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
