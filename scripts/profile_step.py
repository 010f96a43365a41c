"""Profiles the train or eval step under jax.profiler and prints where the time went.

    python scripts/profile_step.py [--config hrnet_w32] [--dtype bf16] [--batch-size 32]
        [--step train|eval] [--steps 5] [--warmup 2] [--image-size 256]
        [--set model.scan=all] [--logdir output/profile] [--top 25]

Builds the same pmap'd step as scripts/benchmark.py on synthetic inputs
already on the devices, compiles it, runs ``--warmup`` untimed calls and then
``--steps`` calls inside ``jax.profiler.trace``. Prints, per step: the wall
time, the host's time inside the calls, how long the device was busy and idle
(gaps between kernels point at a host- or launch-bound step), ops per step,
the top op categories by time (HLO op names without their ``.N``), the time in
copies and transposes and, on a GPU, the top kernels; then the busiest traced
processes and threads. The raw trace stays under ``--logdir`` (its path is
printed) for a closer look in Perfetto or TensorBoard.

On a GPU, XLA's default is to run its command buffers (CUDA graphs) op by
op while the profiler is on (with jax 0.11.2 on an H200, 63% of the W32
train step's kernels still ran inside graphs), and the tracer adds to every
launch, so a launch-bound step looks slower than it trains: compare the wall
time with scripts/benchmark.py, or profile with ``--keep-command-buffers``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from hrnet_jax.cli import DEFAULT_COMPILATION_CACHE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="hrnet_w32",
                        help="a preset (hrnet_w32, hrnet_w48, any hrnet_w<C>)")
    parser.add_argument("--dtype", default="bfloat16",
                        help="compute dtype: float32 (fp32) or bfloat16 (bf16)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per device per step")
    parser.add_argument("--step", choices=("train", "eval"), default="train",
                        help="the train step (forward, backward, Adam) or the eval step")
    parser.add_argument("--eval-flip", action=argparse.BooleanOptionalAction, default=True,
                        help="evaluate with the flip test, as validation does (default on)")
    parser.add_argument("--steps", type=int, default=5, help="profiled calls")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    parser.add_argument("--image-size", default="256",
                        help="input size, N or WIDTHxHEIGHT, multiples of 32 (heatmaps are 1/4)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--logdir", default="output/profile", metavar="DIR",
                        help="where jax.profiler writes the trace (default %(default)s)")
    parser.add_argument("--top", type=int, default=25,
                        help="op categories, kernels and trace lines listed")
    parser.add_argument("--python-tracer", action="store_true",
                        help="also trace Python calls (slows the host, so dispatch looks slower)")
    parser.add_argument("--keep-command-buffers", action="store_true",
                        help="keep XLA's GPU command buffers (CUDA graphs) while profiling, as "
                             "training runs them (by default XLA runs them op by op under the "
                             "profiler; kernels inside a graph may lose their op names)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--compilation-cache", default=DEFAULT_COMPILATION_CACHE, metavar="DIR",
                        help="JAX's persistent compilation cache ('none' disables; default "
                             "%(default)s)")
    args = parser.parse_args(argv)
    if args.keep_command_buffers:
        # XLA reads its flags when the backend starts, so before anything touches a device.
        os.environ["XLA_FLAGS"] = " ".join(filter(None, (
            os.environ.get("XLA_FLAGS"), "--xla_enable_command_buffers_during_profiling=true")))

    from hrnet_jax import benchmark, cli
    from hrnet_jax.models.scan import scan_name

    if "," in args.config:
        parser.error(f"--config: one config at a time, got {args.config!r}")
    if "," in args.dtype:
        parser.error(f"--dtype: one dtype at a time, got {args.dtype!r}")
    if args.top <= 0:
        parser.error(f"--top must be positive, got {args.top}")
    try:
        (((name, dtype), cfg),) = benchmark.plan_benchmark(
            args.config, batch_size=args.batch_size, dtypes=args.dtype, steps=args.steps,
            warmup=args.warmup, image_size=args.image_size, overrides=args.overrides).items()
        scan = scan_name(cfg.model.scan)
    except ValueError as e:
        parser.error(str(e))
    cli.enable_compilation_cache(args.compilation_cache)

    import jax

    from hrnet_jax import profiling
    from hrnet_jax.train.state import init_variables

    def say(line: str) -> None:
        print(line, flush=True)

    variables = init_variables(cfg, jax.random.key(args.seed))
    data = benchmark.synthetic_batch(cfg, args.batch_size, args.seed + 1)
    if args.step == "train":
        case = benchmark.train_case(cfg, variables, data)
    else:
        case = benchmark.eval_case(cfg, variables, data, flip_test=args.eval_flip)
    width, height = cfg.model.image_size
    devices = jax.local_device_count()
    say(f"{name} {dtype} scan={scan} {case.name} step, {width}x{height}, batch "
        f"{args.batch_size}x{devices} on {devices} x {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}")
    if os.environ.get("XLA_FLAGS"):
        say(f"XLA_FLAGS={os.environ['XLA_FLAGS']}")
    if jax.default_backend() == "gpu" and not args.keep_command_buffers:
        say("note: while profiling, XLA's default is to run command buffers (CUDA graphs) op by "
            "op (--keep-command-buffers keeps them), and the tracer slows every launch; compare "
            "the wall time with scripts/benchmark.py's ms/step")
    say("compiling ...")
    start = time.perf_counter()
    compiled = case.step.lower(*case.args).compile()
    say(f"compiled in {time.perf_counter() - start:.1f} s")
    say(f"profiling {args.steps} steps after {args.warmup} warm-up calls ...")
    profile = profiling.profile_step(compiled, case.args, steps=args.steps, warmup=args.warmup,
                                     log_dir=args.logdir, carry_first=case.carry_first,
                                     python_tracer=args.python_tracer)
    say(f"trace: {profile.trace_path}")
    say(profiling.format_summary(profile.summary, top=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
