"""The train and eval steps compiled for an NVIDIA GPU on a machine without one.

XLA can compile for a GPU it is only told about: JAX's CUDA plugin opens a
compile-only client for a target description (compute capability, cores,
memory and its bandwidth), and the program it builds is the one that GPU
would run, the same fusions, cuDNN calls, loops and copies, except that
each convolution's algorithm is picked by cuDNN's heuristics rather than by
timing candidates on the device. A GPU step made of thousands of small
kernels is bound by launching them, so :func:`~hrnet_jax.program_census.census`
of this program (a kernel per fusion, convolution or copy; a loop's once per
iteration) is what a change to the step does to the GPU, measured on a CPU.

It needs the CUDA plugin of the installed jax, and no GPU, driver or CUDA
toolkit: ``pip install "jax-cuda13-pjrt==$V" "jax-cuda13-plugin==$V"`` with
``V`` jax's version; run with ``JAX_PLATFORMS=cpu`` so that JAX does not look
for a GPU (``scripts/gpu_census.py`` sets it).

The steps are the bodies :func:`~hrnet_jax.train.steps.train_step_body` and
:func:`~hrnet_jax.evaluation.eval_step_body` that training ``pmap``\\ s, run
here under ``shard_map`` over a one-device mesh with the same axis name:
the program of one device of the pmap.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hrnet_jax.config import Config, override
from hrnet_jax.evaluation import eval_step_body
from hrnet_jax.models import build_model
from hrnet_jax.models.scan import scan_name
from hrnet_jax.parallel import AXIS
from hrnet_jax.program_census import Census, census
from hrnet_jax.train.state import create_train_state, lr_boundaries
from hrnet_jax.train.steps import train_step_body

# Each target's description, from XLA's published GPU target specifications.
TARGETS: Mapping[str, Mapping[str, Any]] = {
    "h100": {
        "name": "NVIDIA H100 80GB HBM3", "core_count": 132,
        "memory_bandwidth": 3_352_320_000_000, "device_memory_size": 84_942_979_072,
    },
    "h200": {
        "name": "NVIDIA H200 141GB HBM3e", "core_count": 132,
        "memory_bandwidth": 4_800_000_000_000, "device_memory_size": 151_397_597_184,
    },
}
# What the two share (Hopper, compute capability 9.0), and the CUDA and cuDNN
# versions the program is compiled for.
_HOPPER = {
    "threads_per_block_limit": 1024, "threads_per_warp": 32,
    "shared_memory_per_block": 49_152, "shared_memory_per_core": 233_472,
    "shared_memory_per_block_optin": 232_448, "threads_per_core_limit": 2048,
    "fpus_per_core": 128, "block_dim_limit_x": 2_147_483_647, "block_dim_limit_y": 65_535,
    "block_dim_limit_z": 65_535, "l2_cache_size": 52_428_800, "clock_rate_ghz": 1.98,
    "registers_per_core_limit": 65_536, "registers_per_block_limit": 65_536,
}
_COMPUTE_CAPABILITY = (9, 0)
_CUDA_RUNTIME = (13, 0, 0)
_CUDNN = (9, 10)
STEPS = ("train", "eval+flip", "eval")


def target_config(target: str) -> str:
    """The text-format ``GpuTargetConfigProto`` XLA compiles ``target`` (``h100``, ``h200``) for."""
    if target not in TARGETS:
        raise ValueError(f"unknown GPU target {target!r}: expected one of {', '.join(TARGETS)}")
    spec = TARGETS[target]
    fields = {**_HOPPER, "core_count": spec["core_count"],
              "memory_bandwidth": spec["memory_bandwidth"],
              "device_memory_size": spec["device_memory_size"]}
    info = "".join(f"  {key}: {value}\n" for key, value in fields.items())
    major, minor = _COMPUTE_CAPABILITY
    runtime = "".join(f"  {k}: {v}\n"
                      for k, v in zip(("major", "minor", "patch"), _CUDA_RUNTIME, strict=True))
    return (f"gpu_device_info {{\n{info}  cuda_compute_capability {{\n    major: {major}\n"
            f"    minor: {minor}\n  }}\n}}\n"
            f'platform_name: "CUDA"\n'
            f"dnn_version_info {{\n  major: {_CUDNN[0]}\n  minor: {_CUDNN[1]}\n}}\n"
            f"runtime_version {{\n{runtime}}}\n"
            f'device_description_str: "{spec["name"]}"\n')


def gpu_topology(target: str = "h100") -> Any:
    """A compile-only one-GPU topology for ``target``; RuntimeError naming the plugin to
    install where JAX's CUDA plugin is missing."""
    from jax.experimental import topologies

    config = target_config(target)
    try:
        return topologies.get_topology_desc(platform="cuda", target_config=config,
                                            topology="1x1x1")
    except Exception as error:  # noqa: BLE001 - re-raised with what to install
        version = jax.__version__
        raise RuntimeError(
            f"cannot compile for a GPU without one here ({type(error).__name__}: {error}). "
            f'It needs JAX\'s CUDA plugin: pip install "jax-cuda13-pjrt=={version}" '
            f'"jax-cuda13-plugin=={version}" (no GPU or CUDA toolkit needed), and '
            "JAX_PLATFORMS=cpu") from error


def abstract_variables(cfg: Config) -> Any:
    """Shapes and dtypes of ``{'params', 'batch_stats'}`` of ``cfg``'s model, nothing computed."""
    model = build_model(cfg)
    width, height = cfg.model.image_size
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, height, width)),
                                             train=False))


def step_arguments(cfg: Config, step: str, batch: int) -> tuple:
    """One device's arguments of ``step`` (:data:`STEPS`) at ``batch``, as ShapeDtypeStructs."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}: expected one of {', '.join(STEPS)}")
    width, height = cfg.model.image_size
    hm_width, hm_height = cfg.model.heatmap_size
    joints = cfg.model.num_joints
    f32 = jnp.float32
    images = jax.ShapeDtypeStruct((batch, 3, height, width), f32)
    target = jax.ShapeDtypeStruct((batch, joints, hm_height, hm_width), f32)
    target_weight = jax.ShapeDtypeStruct((batch, joints, 1), f32)
    variables = abstract_variables(cfg)
    if step == "train":
        state = jax.eval_shape(lambda v: create_train_state(cfg, v, steps_per_epoch=1), variables)
        boundaries = jax.ShapeDtypeStruct(lr_boundaries(cfg, steps_per_epoch=1).shape, jnp.int32)
        return state, images, target, target_weight, boundaries
    pairs = jax.ShapeDtypeStruct((batch, 2), f32)
    return (variables, images, target, target_weight, pairs, pairs,
            jax.ShapeDtypeStruct((batch,), jnp.bool_))


def step_body(cfg: Config, step: str) -> Callable:
    """The per-device function training (``train``) or validation (``eval+flip``, ``eval``) runs."""
    if step == "train":
        return train_step_body(cfg)
    if step in ("eval+flip", "eval"):
        return eval_step_body(cfg, flip_test=step == "eval+flip")
    raise ValueError(f"unknown step {step!r}: expected one of {', '.join(STEPS)}")


@dataclasses.dataclass(frozen=True)
class GpuProgram:
    """One step compiled for a GPU target: how long that took, and what the program runs.

    ``trace_lower_s`` and ``xla_compile_s`` are this machine's times (no
    convolution autotuning). Memory is XLA's buffer assignment for the device.
    """

    step: str
    target: str
    scan: str  # model.scan as compiled ("auto" as a GPU resolves it)
    trace_lower_s: float
    xla_compile_s: float
    census: Census
    convolutions: int
    copies: int
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    hlo: str = dataclasses.field(repr=False)


def compile_step(cfg: Config, step: str, batch: int, *, target: str = "h100",
                 topology: Any = None) -> GpuProgram:
    """Compiles ``step`` of ``cfg`` at ``batch`` images per device for ``target``
    (``model.scan="auto"`` as it is on a GPU, not as on this machine)."""
    cfg = override(cfg, {"model.scan": scan_name(cfg.model.scan, "gpu")})
    topology = gpu_topology(target) if topology is None else topology
    mesh = jax.sharding.Mesh(topology.devices, (AXIS,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                        step_arguments(cfg, step, batch))
    spec = jax.sharding.PartitionSpec()
    fn = jax.jit(jax.shard_map(step_body(cfg, step), mesh=mesh, in_specs=spec, out_specs=spec,
                               check_vma=False))
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    hlo = compiled.as_text()
    counted = census(hlo)
    memory = compiled.memory_analysis()
    return GpuProgram(
        step=step, target=target, scan=cfg.model.scan, trace_lower_s=t1 - t0,
        xla_compile_s=t2 - t1, census=counted,
        convolutions=counted.count("custom-call:__cudnn$conv"),
        copies=counted.count("copy") + counted.count("fusion:copy"),
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes), hlo=hlo)
