"""Train-step and evaluation throughput, compile time and model FLOPs utilisation.

The steps timed are the ones training runs: :func:`~hrnet_jax.train.steps.make_train_step`
(forward, backward, Adam update, PCK) and
:func:`~hrnet_jax.evaluation.make_eval_step` (with the flip test and
post-processing, as validation runs it), pmap'd over every local device.

For each step the pmap'd function is lowered and compiled ahead of time, so
tracing and XLA compilation are timed apart from the steps; the timed loop
then calls that same compiled executable on synthetic inputs generated on the
devices, after ``warmup`` untimed calls, and blocks only once, at its end.

FLOPs are model FLOPs, the convolutions and matrix products of the step's
jaxpr counted by :mod:`hrnet_jax.flop_count` (each as XLA's cost analysis
counts it, a scanned loop's body once per iteration), so every ``model.scan``
counts the same, and nothing extra is lowered. Under ``pmap`` that is the
program of one device, so a step's FLOPs are that times the device count;
MFU is the achieved rate over the devices' summed peak. Memory is XLA's buffer
assignment for one device and, on accelerators, the allocator's peak.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hrnet_jax import config as config_lib
from hrnet_jax.compilation import cache_counts
from hrnet_jax.config import Config, get_config, override
from hrnet_jax.evaluation import make_eval_step
from hrnet_jax.flop_count import function_flops
from hrnet_jax.models.scan import scan_name
from hrnet_jax.parallel import replicate
from hrnet_jax.program_census import census as program_census
from hrnet_jax.train.state import create_train_state, init_variables, lr_boundaries
from hrnet_jax.train.steps import make_train_step

DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "f32": "float32",
                 "bfloat16": "bfloat16", "bf16": "bfloat16"}
# Stage 4 is at 1/32 of the input, and the heatmaps at 1/4.
IMAGE_SIZE_MULTIPLE = 32

# Dense (no sparsity) peak TFLOP/s per device from the vendors' data sheets,
# keyed by a lower-case fragment of ``device_kind``; the first match wins.
# float32 convolutions under JAX's default matmul precision run on the
# TF32 tensor cores of Ampere and later GPUs, so 'tf32' is their peak then;
# with jax_default_matmul_precision 'highest'/'float32' it is 'fp32'.
KNOWN_PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("h100 pcie", "NVIDIA H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("h100 nvl", "NVIDIA H100 NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("h100", "NVIDIA H100 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("h200", "NVIDIA H200 (as H100 SXM)", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("a100", "NVIDIA A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)
FLOPS_SOURCE = "convolutions and matrix products of the step's jaxpr"
_FULL_FP32_PRECISIONS = ("highest", "float32", "f32_f32_f32")


@dataclasses.dataclass(frozen=True)
class Peak:
    """The peak a record's MFU is measured against, and where it came from."""

    tflops_per_device: float | None
    source: str


@dataclasses.dataclass(frozen=True)
class BenchmarkRecord:
    """One step function of one configuration and dtype, timed.

    ``flops_per_step`` counts all devices; ``mfu`` is ``tflops_per_s`` over
    ``peak_tflops_per_device * device_count`` (None when the peak is unknown).
    """

    config: str
    dtype: str
    scan: str  # model.scan as run: "none", "blocks", "modules" or "all"
    step: str  # "train", "eval" or "eval+flip"
    image_size: tuple[int, int]  # (width, height)
    batch_per_device: int
    global_batch: int
    device_kind: str
    device_count: int
    warmup_steps: int
    timed_steps: int
    trace_lower_s: float
    xla_compile_s: float
    compile_s: float  # trace_lower_s + xla_compile_s
    cache_hit: bool  # XLA's program came from JAX's persistent compilation cache
    seconds: float  # the timed loop
    step_ms: float
    images_per_s: float
    flops_per_step: float | None
    flops_source: str
    tflops_per_s: float | None
    peak_tflops_per_device: float | None
    peak_source: str
    mfu: float | None
    # XLA's buffer assignment for one device: arguments + outputs + temporaries
    # (donated arguments counted once); None where the backend does not say.
    program_bytes: int | None
    # The allocator's peak on device 0 so far in this process (accelerators only).
    device_peak_bytes: int | None
    # Operations (kernels, copies, loop slices) the compiled program runs per call,
    # a loop's body counted once per iteration (hrnet_jax.program_census), and the
    # loop iterations it runs: on a GPU each operation is a launch.
    ops_per_step: int | None
    loop_iterations: int | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- flags and peaks


def parse_dtypes(dtypes: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical dtype names (``float32``, ``bfloat16``) from names or aliases (fp32, bf16)."""
    names = [d.strip() for d in (dtypes.split(",") if isinstance(dtypes, str) else dtypes)]
    names = [d for d in names if d]
    if not names:
        raise ValueError("dtypes: expected at least one of float32, bfloat16")
    out = []
    for name in names:
        canonical = DTYPE_ALIASES.get(name.lower())
        if canonical is None:
            raise ValueError(f"unknown dtype {name!r}: expected one of float32 (fp32) or "
                             "bfloat16 (bf16)")
        if canonical not in out:
            out.append(canonical)
    return tuple(out)


def parse_image_size(size: int | str | Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` from ``256``, ``"256"``, ``"192x256"`` (width x height) or a pair."""
    width, height = config_lib.parse_image_size(size)
    if width % IMAGE_SIZE_MULTIPLE or height % IMAGE_SIZE_MULTIPLE:
        raise ValueError(f"image size {width}x{height}: both sides must be positive multiples "
                         f"of {IMAGE_SIZE_MULTIPLE} (HRNet's deepest branch is at 1/32)")
    return width, height


def _float32_peak_key() -> str:
    precision = jax.config.jax_default_matmul_precision
    return "fp32" if str(precision).lower() in _FULL_FP32_PRECISIONS else "tf32"


def lookup_peak(device_kind: str, dtype: str, override_tflops: float | None = None) -> Peak:
    """Peak TFLOP/s of one device for ``dtype``: ``override_tflops``, else :data:`KNOWN_PEAKS`."""
    if override_tflops is not None:
        return Peak(float(override_tflops), "--peak-tflops")
    kind = device_kind.lower()
    for fragment, label, peaks in KNOWN_PEAKS:
        if fragment in kind:
            key = "bf16" if dtype == "bfloat16" else _float32_peak_key()
            note = {"bf16": "bf16 dense", "fp32": "fp32 (no tensor cores)",
                    "tf32": "tf32 dense (fp32 convolutions use TF32 under JAX's default "
                            "precision)"}[key]
            return Peak(peaks[key], f"{label} {note}")
    return Peak(None, f"unknown peak for {device_kind!r} (give --peak-tflops)")


def _analysis(stage: Any, method: str) -> Any:
    """``stage.<method>()``, the first program's where there are several; None if unavailable."""
    try:
        analysis = getattr(stage, method)()
    except Exception:  # not every backend and jax version implements it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return analysis


# --------------------------------------------------------------------------- timing


def benchmark_config(name: str, *, batch_size: int, dtype: str, image_size: tuple[int, int],
                     overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """The preset ``name`` at ``image_size`` (heatmaps at 1/4), ``dtype`` and per-device batch.

    ``overrides`` (``["model.stage3.num_modules=1"]``, as ``--set``) apply last.
    """
    width, height = image_size
    cfg = override(get_config(name), {
        "model.dtype": dtype,
        "model.image_size": (width, height),
        "model.heatmap_size": (width // 4, height // 4),
        "train.batch_size_per_device": batch_size,
        "test.batch_size_per_device": batch_size,
    })
    return override(cfg, overrides)


def _on_devices(make: Callable[[jax.Array], Any], seed: int) -> Any:
    """``make(key)`` evaluated on every local device, laid out as pmap takes its arguments."""
    keys = jax.random.split(jax.random.key(seed), jax.local_device_count())
    return jax.pmap(make)(keys)


def synthetic_batch(cfg: Config, batch: int, seed: int) -> dict[str, Any]:
    """Random images, heatmap targets and eval metadata, each (D, b, ...) on the devices."""
    width, height = cfg.model.image_size
    hm_width, hm_height = cfg.model.heatmap_size
    joints = cfg.model.num_joints

    def make(key):
        k_img, k_tgt = jax.random.split(key)
        return {
            "images": jax.random.normal(k_img, (batch, 3, height, width), jnp.float32),
            "target": jax.random.uniform(k_tgt, (batch, joints, hm_height, hm_width), jnp.float32),
            "target_weight": jnp.ones((batch, joints, 1), jnp.float32),
            "center": jnp.tile(jnp.array([width / 2, height / 2], jnp.float32), (batch, 1)),
            "scale": jnp.tile(jnp.array([width / 200, height / 200], jnp.float32), (batch, 1)),
            "valid": jnp.ones((batch,), bool),
        }

    return _on_devices(make, seed)


@dataclasses.dataclass(frozen=True)
class _Timings:
    trace_lower_s: float
    xla_compile_s: float
    cache_hit: bool
    loop_s: float
    flops_per_device: float | None
    flops_source: str
    program_bytes: int | None
    device_peak_bytes: int | None
    ops_per_step: int | None
    loop_iterations: int | None


def program_bytes(compiled: Any) -> int | None:
    """Device memory XLA assigned to a compiled program: arguments, outputs and temporaries."""
    analysis = _analysis(compiled, "memory_analysis")
    if analysis is None:
        return None
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    return int(total)


def device_peak_bytes() -> int | None:
    """The allocator's peak on the first local device, where the backend reports it."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


@dataclasses.dataclass
class StepCase:
    """A pmap'd step and its arguments on the devices, ready to lower, time or profile.

    ``name`` is ``train``, ``eval`` or ``eval+flip``. With ``carry_first`` the
    step's first output is its next first argument (the train state):
    :meth:`run` puts it in place of ``args[0]`` after each call.
    """
    name: str
    step: Callable
    args: tuple
    carry_first: bool

    def run(self, fn: Callable, calls: int) -> Any:
        """Calls ``fn`` (the step or its compiled executable) ``calls`` times; the last output."""
        out = None
        for _ in range(calls):
            out = fn(*self.args)
            if self.carry_first:
                self.args = (out[0], *self.args[1:])
        return out

    def flops(self) -> int:
        """Model FLOPs of one call on one device (:mod:`hrnet_jax.flop_count`), by tracing."""
        return function_flops(self.step, *self.args)


def train_case(cfg: Config, variables: Any, data: Mapping[str, Any]) -> StepCase:
    """The train step (forward, backward, Adam, PCK) on ``data`` from :func:`synthetic_batch`."""
    state = create_train_state(cfg, variables, steps_per_epoch=1)
    args = (replicate(state), data["images"], data["target"], data["target_weight"],
            replicate(lr_boundaries(cfg, steps_per_epoch=1)))
    return StepCase("train", make_train_step(cfg), args, carry_first=True)


def eval_case(cfg: Config, variables: Any, data: Mapping[str, Any], *,
              flip_test: bool = True) -> StepCase:
    """The evaluation step as validation runs it, with the flip test unless ``flip_test=False``."""
    args = (replicate(variables), data["images"], data["target"], data["target_weight"],
            data["center"], data["scale"], data["valid"])
    return StepCase("eval+flip" if flip_test else "eval",
                    make_eval_step(cfg, flip_test=flip_test), args, carry_first=False)


def _time_case(case: StepCase, warmup: int, steps: int,
               log: Callable[[str], None] = lambda line: None,
               hlo_path: str | None = None) -> _Timings:
    """Lowers and compiles ``case.step``, times ``steps`` calls after ``warmup``, counts FLOPs.

    ``log`` hears of each phase as it ends, so that a slow compile or a slow
    step shows which it is. With ``hlo_path`` the compiled program's optimised
    HLO (XLA's fusions, loops and kernels as the backend will run them; also
    for a program loaded from the persistent cache) is written there. The
    FLOPs are counted last, so the trace they need does not shorten the timed
    tracing.
    """
    hits = cache_counts()["cache_hits"]
    t0 = time.perf_counter()
    lowered = case.step.lower(*case.args)
    t1 = time.perf_counter()
    log(f"  traced and lowered in {t1 - t0:.1f} s; compiling")
    compiled = lowered.compile()
    t2 = time.perf_counter()
    cache_hit = cache_counts()["cache_hits"] > hits
    log(f"  compiled in {t2 - t1:.1f} s{' (from the persistent cache)' if cache_hit else ''}; "
        f"{warmup} warm-up call(s)")
    try:
        hlo_text = compiled.as_text() or ""
    except Exception as error:  # noqa: BLE001 - the program's text is optional; the timing is not
        log(f"  (no optimised HLO from this backend: {error})")
        hlo_text = ""
    if hlo_path is not None:
        os.makedirs(os.path.dirname(hlo_path) or ".", exist_ok=True)
        with open(hlo_path, "w") as f:
            f.write(hlo_text)
    try:
        ops = program_census(hlo_text)
    except ValueError as error:  # a count is not worth a lost measurement
        log(f"  (operations not counted: {error})")
        ops = None
    t_warm = time.perf_counter()  # after the HLO is written: that is no call's time
    jax.block_until_ready((case.run(compiled, warmup), case.args))
    t3 = time.perf_counter()
    log(f"  warm-up calls took {t3 - t_warm:.2f} s; timing {steps} call(s)")
    jax.block_until_ready((case.run(compiled, steps), case.args))
    t4 = time.perf_counter()
    return _Timings(trace_lower_s=t1 - t0, xla_compile_s=t2 - t1, cache_hit=cache_hit,
                    loop_s=t4 - t3, flops_per_device=case.flops(), flops_source=FLOPS_SOURCE,
                    program_bytes=program_bytes(compiled), device_peak_bytes=device_peak_bytes(),
                    ops_per_step=None if ops is None else ops.operations,
                    loop_iterations=None if ops is None else ops.loop_iterations)


def _record(*, name: str, cfg: Config, step: str, batch: int, warmup: int, steps: int,
            timings: _Timings, peak: Peak) -> BenchmarkRecord:
    loop_s, flops_per_device = timings.loop_s, timings.flops_per_device
    devices = jax.local_device_count()
    flops = None if flops_per_device is None else flops_per_device * devices
    tflops = None if flops is None else flops * steps / loop_s / 1e12
    mfu = (None if tflops is None or peak.tflops_per_device is None
           else tflops / (peak.tflops_per_device * devices))
    scan = scan_name(cfg.model.scan)
    return BenchmarkRecord(
        config=name, dtype=cfg.model.dtype, scan=scan, step=step,
        image_size=tuple(cfg.model.image_size),
        batch_per_device=batch, global_batch=batch * devices,
        device_kind=jax.devices()[0].device_kind, device_count=devices,
        warmup_steps=warmup, timed_steps=steps,
        trace_lower_s=timings.trace_lower_s, xla_compile_s=timings.xla_compile_s,
        compile_s=timings.trace_lower_s + timings.xla_compile_s, cache_hit=timings.cache_hit,
        seconds=loop_s, step_ms=1e3 * loop_s / steps,
        images_per_s=batch * devices * steps / loop_s,
        flops_per_step=flops, flops_source=timings.flops_source, tflops_per_s=tflops,
        peak_tflops_per_device=peak.tflops_per_device, peak_source=peak.source, mfu=mfu,
        program_bytes=timings.program_bytes, device_peak_bytes=timings.device_peak_bytes,
        ops_per_step=timings.ops_per_step, loop_iterations=timings.loop_iterations,
    )


def plan_benchmark(configs: str | Sequence[str], *, batch_size: int, dtypes: str | Sequence[str],
                   steps: int, warmup: int, image_size: int | str | Sequence[int],
                   peak_tflops: float | None = None,
                   overrides: Sequence[str] | Mapping[str, Any] = ()) -> dict[tuple[str, str], Config]:
    """Checks the arguments of :func:`run_benchmark`; returns the config of each (name, dtype).

    Raises ValueError naming the offending value, before anything compiles.
    """
    dtype_names = parse_dtypes(dtypes)
    size = parse_image_size(image_size)
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if steps <= 0:
        raise ValueError(f"timed steps must be positive, got {steps}")
    if warmup < 0:
        raise ValueError(f"warm-up steps must be non-negative, got {warmup}")
    if peak_tflops is not None and not peak_tflops > 0:
        raise ValueError(f"peak TFLOP/s must be positive, got {peak_tflops}")
    if isinstance(configs, str):
        configs = [c.strip() for c in configs.split(",") if c.strip()]
    if not configs:
        raise ValueError("configs: expected at least one config name")
    return {(name, dtype): benchmark_config(name, batch_size=batch_size, dtype=dtype,
                                            image_size=size, overrides=overrides)
            for name in configs for dtype in dtype_names}


def run_benchmark(configs: str | Sequence[str] = ("hrnet_w32", "hrnet_w48"), *, batch_size: int = 32,
                  dtypes: str | Sequence[str] = ("float32", "bfloat16"), steps: int = 20,
                  warmup: int = 3, image_size: int | str | Sequence[int] = 256,
                  eval_flip: bool = True, peak_tflops: float | None = None,
                  train: bool = True, evaluate: bool = True, seed: int = 0,
                  overrides: Sequence[str] | Mapping[str, Any] = (),
                  log: Callable[[str], None] | None = None,
                  on_record: Callable[[BenchmarkRecord], None] | None = None,
                  hlo_dir: str | None = None) -> list[BenchmarkRecord]:
    """Times the train and eval steps of each config and dtype on all local devices.

    Args:
      configs: preset names (``hrnet_w32``, ``hrnet_w48``, any ``hrnet_w<C>``), a list or
        comma-separated.
      batch_size: images per device per step.
      dtypes: compute dtypes, names or aliases (``fp32``, ``bf16``).
      steps: timed steps per step function; ``warmup``: untimed calls before them.
      image_size: N or ``WIDTHxHEIGHT``, multiples of 32; heatmaps are a quarter of it.
      eval_flip: evaluate with the flip test (two forward passes), as validation does.
      peak_tflops: peak TFLOP/s of one device for MFU, for every dtype; by
        default :data:`KNOWN_PEAKS` by device kind, or no MFU.
      train, evaluate: which step functions to time.
      overrides: config fields to change in every config, as ``--set`` takes them
        (``["model.stage3.num_modules=1"]``); sizes, dtype and batch come from the
        arguments above.
      log: called with a line as each measurement starts and as each of its
        phases (lowering, compiling, warming up) ends.
      on_record: called with each record as soon as it is measured.
      hlo_dir: write each compiled program's optimised HLO here, as
        ``<config>_<dtype>_<scan>_<step>.hlo.txt`` (``eval+flip`` as ``eval_flip``).

    Returns:
      One :class:`BenchmarkRecord` per config, dtype and step function, in that order.
    """
    cfgs = plan_benchmark(configs, batch_size=batch_size, dtypes=dtypes, steps=steps,
                          warmup=warmup, image_size=image_size, peak_tflops=peak_tflops,
                          overrides=overrides)
    if not (train or evaluate):
        raise ValueError("nothing to time: enable the train step, the eval step or both")
    log = log or (lambda line: None)
    on_record = on_record or (lambda record: None)
    device_kind = jax.devices()[0].device_kind
    records = []
    for (name, dtype), cfg in cfgs.items():
        peak = lookup_peak(device_kind, dtype, peak_tflops)
        common = dict(name=name, cfg=cfg, batch=batch_size, warmup=warmup, steps=steps, peak=peak)
        variables = init_variables(cfg, jax.random.key(seed))
        data = synthetic_batch(cfg, batch_size, seed + 1)

        def hlo_path(step: str, name=name, dtype=dtype, cfg=cfg) -> str | None:
            if hlo_dir is None:
                return None
            step = step.replace("+", "_")  # eval+flip: file names of plain characters
            return os.path.join(hlo_dir, f"{name}_{dtype}_{scan_name(cfg.model.scan)}_{step}.hlo.txt")

        if train:
            log(f"{name} {dtype} train step: compiling and timing")
            case = train_case(cfg, variables, data)
            records.append(_record(step=case.name, timings=_time_case(
                case, warmup, steps, log, hlo_path(case.name)), **common))
            del case  # the loop's last state is dropped with it
            on_record(records[-1])
        if evaluate:
            case = eval_case(cfg, variables, data, flip_test=eval_flip)
            log(f"{name} {dtype} {case.name} step: compiling and timing")
            records.append(_record(step=case.name, timings=_time_case(
                case, warmup, steps, log, hlo_path(case.name)), **common))
            del case
            on_record(records[-1])
    return records


# --------------------------------------------------------------------------- reporting


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(records: Sequence[BenchmarkRecord]) -> str:
    """A plain-text table, one row per record, under a line naming the devices."""
    if not records:
        return "(no measurements)"
    first = records[0]
    header = (f"{first.device_count} x {first.device_kind}, jax {jax.__version__}, "
              f"{first.warmup_steps} warm-up + {first.timed_steps} timed steps")
    columns = ("config", "dtype", "scan", "step", "image", "batch", "compile s", "step ms",
               "images/s", "GFLOP/img", "TFLOP/s", "MFU", "GiB", "peak GiB", "ops/step")
    rows = [_row(r) for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    lines = [header, "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    peaks = sorted({f"{r.dtype}: {r.peak_source}"
                    + ("" if r.peak_tflops_per_device is None else f" = {r.peak_tflops_per_device:g}")
                    for r in records})
    lines.append("peak TFLOP/s per device (MFU = TFLOP/s / (peak x devices)): " + "; ".join(peaks))
    lines.append("compile s = trace and lower + XLA compile (* from the persistent cache); "
                 "batch = per device x devices; FLOPs = model FLOPs, the step's "
                 "convolutions and matrix products; GiB = XLA's buffers for one device "
                 "(arguments, outputs, temporaries); peak GiB = the "
                 "device allocator's peak so far in the process; ops/step = the operations "
                 "(kernels, copies) the compiled step runs, each loop's once per iteration")
    return "\n".join(lines)


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def _row(r: BenchmarkRecord) -> tuple[str, ...]:
    gflop_per_image = None if r.flops_per_step is None else r.flops_per_step / r.global_batch / 1e9
    return (
        r.config, r.dtype, r.scan, r.step, f"{r.image_size[0]}x{r.image_size[1]}",
        f"{r.batch_per_device}x{r.device_count}",
        f"{r.compile_s:.1f}" + ("*" if r.cache_hit else ""), f"{r.step_ms:.1f}",
        f"{r.images_per_s:.2f}", _fmt(gflop_per_image, ".2f"), _fmt(r.tflops_per_s, ".3f"),
        "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%", _gib(r.program_bytes),
        _gib(r.device_peak_bytes), _fmt(r.ops_per_step, ",d"),
    )


def format_record(r: BenchmarkRecord) -> str:
    """One record on one line, as it is measured."""
    (config, dtype, scan, step, image, batch, compile_s, step_ms, images_per_s, gflop, tflops,
     mfu, gib, peak, ops) = _row(r)
    return (f"{config} {dtype} scan={scan} {step} {image} batch {batch}: compile {compile_s} s "
            f"(trace+lower {r.trace_lower_s:.1f} s), {step_ms} ms/step, {images_per_s} images/s, "
            f"{tflops} TFLOP/s, MFU {mfu}, XLA buffers {gib} GiB, device peak {peak}"
            + ("" if r.device_peak_bytes is None else " GiB")
            + f", {ops} ops/step in {_fmt(r.loop_iterations, 'd')} loop iterations")


def to_json(records: Sequence[BenchmarkRecord]) -> dict[str, Any]:
    """The records with the environment they were measured in, as JSON-ready data."""
    return {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.local_device_count(),
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "records": [r.to_dict() for r in records],
    }


def write_json(path: str, records: Sequence[BenchmarkRecord]) -> None:
    """Writes :func:`to_json` of ``records`` to ``path``, creating its directory."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(to_json(records), f, indent=2)
        f.write("\n")
