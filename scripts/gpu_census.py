"""Counts the kernels of HRNet's train and eval steps as XLA compiles them for a GPU, without one.

    python scripts/gpu_census.py [--configs hrnet_w32] [--dtypes bf16,fp32] [--batch-size 32]
        [--steps train,eval+flip] [--target h100] [--set model.scan=none] [--json out.json]

Compiles each step for an NVIDIA GPU target (h100, h200) with XLA's
deviceless compilation (hrnet_jax.deviceless; needs JAX's CUDA plugin, no
GPU) and prints, for each, the time to trace and lower and to compile on
this machine (without convolution autotuning), the operations one call runs
(kernels, copies and loop slices, each loop's once per iteration), the
convolutions and copies among them, XLA's buffers, and with --kinds N the N
commonest kinds of operation. Nothing runs, so nothing is timed on a GPU:
for that, scripts/benchmark.py on the GPU itself.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

GIB = 2 ** 30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="hrnet_w32",
                        help="comma-separated presets (hrnet_w32, hrnet_w48, any hrnet_w<C>)")
    parser.add_argument("--dtypes", default="bfloat16,float32",
                        help="comma-separated compute dtypes: float32 (fp32), bfloat16 (bf16)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per device")
    parser.add_argument("--image-size", default="256",
                        help="input size, N or WIDTHxHEIGHT, multiples of 32 (heatmaps are 1/4)")
    parser.add_argument("--steps", default="train,eval+flip",
                        help="comma-separated steps: train, eval+flip, eval")
    parser.add_argument("--target", default="h100", help="the GPU: h100 or h200")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config field in every config (repeatable)")
    parser.add_argument("--kinds", type=int, default=0, metavar="N",
                        help="also print the N commonest kinds of operation of each program")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the records here")
    parser.add_argument("--hlo-dir", default=None, metavar="DIR",
                        help="write each program's optimised HLO here")
    args = parser.parse_args(argv)
    # A compile-only client needs no GPU; JAX must not go looking for one.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    from hrnet_jax import benchmark, deviceless
    from hrnet_jax.models.scan import scan_name

    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    try:
        plan = benchmark.plan_benchmark(args.configs, batch_size=args.batch_size,
                                        dtypes=args.dtypes, steps=1, warmup=0,
                                        image_size=args.image_size, overrides=args.overrides)
        for step in steps:
            if step not in deviceless.STEPS:
                raise ValueError(f"unknown step {step!r}: expected one of "
                                 f"{', '.join(deviceless.STEPS)}")
        deviceless.target_config(args.target)
    except ValueError as error:
        parser.error(str(error))
    try:
        topology = deviceless.gpu_topology(args.target)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"compiling for {deviceless.TARGETS[args.target]['name']} on this machine's CPU "
          "(deviceless: no autotuning, nothing runs)", flush=True)
    records = []
    for (name, dtype), cfg in plan.items():
        scan = scan_name(cfg.model.scan, "gpu")  # "auto" as a GPU resolves it
        for step in steps:
            print(f"{name} {dtype} scan={scan} {step}: compiling ...", file=sys.stderr, flush=True)
            program = deviceless.compile_step(cfg, step, args.batch_size, target=args.target,
                                              topology=topology)
            record = {
                "config": name, "dtype": dtype, "scan": scan, "step": step,
                "target": args.target, "batch_per_device": args.batch_size,
                "image_size": list(cfg.model.image_size),
                "trace_lower_s": round(program.trace_lower_s, 2),
                "xla_compile_s": round(program.xla_compile_s, 2),
                "ops_per_step": program.census.operations,
                "loop_iterations": program.census.loop_iterations,
                "convolutions": program.convolutions, "copies": program.copies,
                "argument_bytes": program.argument_bytes, "output_bytes": program.output_bytes,
                "temp_bytes": program.temp_bytes,
                "by_kind": dict(collections.Counter(program.census.by_kind).most_common()),
            }
            records.append(record)
            print(f"{name} {dtype} scan={scan} {step} on {args.target}, batch "
                  f"{args.batch_size}: {record['ops_per_step']:,} ops/step "
                  f"({record['convolutions']} convolutions, {record['copies']} copies, "
                  f"{record['loop_iterations']} loop iterations); trace+lower "
                  f"{program.trace_lower_s:.1f} s, XLA compile {program.xla_compile_s:.1f} s; "
                  f"buffers: arguments {program.argument_bytes / GIB:.2f} GiB, outputs "
                  f"{program.output_bytes / GIB:.2f}, temporaries {program.temp_bytes / GIB:.2f}",
                  flush=True)
            for kind, count in collections.Counter(program.census.by_kind).most_common(args.kinds):
                print(f"    {count:7,d}  {kind}", flush=True)
            if args.hlo_dir:
                os.makedirs(args.hlo_dir, exist_ok=True)
                path = os.path.join(args.hlo_dir, f"{name}_{dtype}_{scan}_"
                                    f"{step.replace('+', '_')}_{args.target}.hlo.txt")
                with open(path, "w") as f:
                    f.write(program.hlo)
            if args.json:  # after every record: a cut-short run keeps what it counted
                with open(args.json, "w") as f:
                    json.dump(records, f, indent=1)
    if args.json:
        print(f"=> wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
