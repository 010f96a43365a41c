"""Command-line flags shared by the training and evaluation scripts, mapped onto a Config."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from hrnet_jax import config as config_lib
from hrnet_jax.config import Config

DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "hrnet_jax", "xla")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--data-root``, ``--dataset``, ``--batch-size``, ``--workers``,
    ``--prefetch``, ``--bf16`` and ``--set``."""
    parser.add_argument("--config", default="hrnet_w32",
                        help="a preset (hrnet_w32, hrnet_w48, hrnet_quickstart, any hrnet_w<C>, "
                             "*_coco) or a reference-format experiment .yaml file")
    parser.add_argument("--dataset", default=None,
                        help="mpii, coco, synthetic (an MPII-format set generated once into "
                             "data/synthetic_mpii), synthetic_coco (a COCO-format one in "
                             "data/synthetic_coco), a registered dataset or module:Class; the "
                             "root is the dataset's default unless --data-root says otherwise")
    parser.add_argument("--data-root", default=None, help="dataset root (overrides the config)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per device, for training and validation")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading worker processes (0: in the main process)")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="batches each worker builds ahead, at most (memory: about "
                             "workers x prefetch batches)")
    parser.add_argument("--bf16", action="store_true",
                        help="compute in bfloat16 (parameters stay float32)")
    parser.add_argument("--compilation-cache", default=DEFAULT_COMPILATION_CACHE, metavar="DIR",
                        help="JAX's persistent compilation cache, so a rerun skips XLA "
                             "compilation ('none' disables; default %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.lr=5e-4 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration the flags describe; ``--set`` is applied last."""
    cfg = config_lib.get_config(args.config)
    dataset = cfg.dataset
    if args.dataset is not None and args.dataset != dataset.name:
        from hrnet_jax.data.registry import dataset_class

        root = dataset_class(args.dataset).default_root
        dataset = dataclasses.replace(dataset, name=args.dataset, root=root)
    if args.data_root is not None:
        dataset = dataclasses.replace(dataset, root=args.data_root)
    cfg = dataclasses.replace(cfg, dataset=dataset)
    if args.batch_size is not None:
        cfg = config_lib.override(cfg, {"train.batch_size_per_device": args.batch_size,
                                         "test.batch_size_per_device": args.batch_size})
    if args.workers is not None:
        cfg = config_lib.override(cfg, {"workers": args.workers})
    if args.prefetch is not None:
        cfg = config_lib.override(cfg, {"prefetch": args.prefetch})
    if args.bf16:
        cfg = config_lib.override(cfg, {"model.dtype": "bfloat16"})
    return config_lib.override(cfg, args.overrides)


def default_workdir(args: argparse.Namespace, cfg: Config) -> str:
    """``output/<dataset>/<config name>``, as the reference lays out its outputs."""
    name = os.path.splitext(os.path.basename(args.config))[0]
    return os.path.join("output", cfg.dataset.name.replace(":", "_"), name)


def enable_compilation_cache(directory: str | None) -> None:
    """Turns on JAX's persistent compilation cache in ``directory`` (None or 'none': off).

    A cache directory set in the environment (``JAX_COMPILATION_CACHE_DIR``) wins.
    """
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or not directory or directory == "none":
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """``--multihost`` and what ``jax.distributed.initialize`` may be told."""
    parser.add_argument("--multihost", action="store_true",
                        help="one process per host, joined by jax.distributed.initialize(); "
                             "without the three flags below JAX detects the cluster (SLURM, "
                             "Open MPI, TPU pods, Kubernetes)")
    parser.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                        help="with --multihost: process 0's address")
    parser.add_argument("--num-processes", type=int, default=None,
                        help="with --multihost: how many processes in all")
    parser.add_argument("--process-id", type=int, default=None,
                        help="with --multihost: this process's index")
    parser.add_argument("--heartbeat-timeout", type=int, default=100, metavar="SECONDS",
                        help="with --multihost: a process silent this long counts as lost and "
                             "the others stop (default %(default)s, JAX's)")


def initialize_distributed(args: argparse.Namespace) -> None:
    """Joins the other processes when ``--multihost`` is given (before any JAX computation).

    Raises:
      ValueError: one of the address flags without ``--multihost``.
    """
    given = {"coordinator_address": args.coordinator_address,
             "num_processes": args.num_processes, "process_id": args.process_id}
    if not args.multihost:
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise ValueError(f"--{named[0].replace('_', '-')} needs --multihost")
        return
    import jax

    try:  # collectives between CPU processes go through gloo (no effect on GPUs)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):
        pass
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None},
                               heartbeat_timeout_seconds=int(args.heartbeat_timeout))


def parse_and_start(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parses a training or evaluation command line, turns on the compilation cache
    (``--compilation-cache``) and joins the other processes (``--multihost``);
    a bad flag ends the program with the parser's usage message."""
    args = parser.parse_args(argv)
    enable_compilation_cache(args.compilation_cache)
    try:
        initialize_distributed(args)
    except ValueError as e:
        parser.error(str(e))
    return args


def is_first_process() -> bool:
    """True in a single-process run and in process 0 of a multi-process one."""
    import jax

    return jax.process_index() == 0


# Exit status of a process whose multi-process run lost another process.
LOST_PROCESS_EXIT = 5


def exit_if_a_process_was_lost(error: BaseException, rerun: str) -> None:
    """In a multi-process run, a failed collective means another process stopped: say
    so and end this process at once (JAX's shutdown would otherwise wait about a
    minute for the lost process's heartbeat). Returns in a single-process run."""
    import jax

    if jax.process_count() == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
        return
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"error: process {jax.process_index()} of {jax.process_count()}: an operation across "
          f"the processes failed ({first}); another process has probably stopped or been "
          f"killed. {rerun}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(LOST_PROCESS_EXIT)
