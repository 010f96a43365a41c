"""Running identical pieces of a network as one ``jax.lax.scan`` (``model.scan``).

HRNet repeats identical pieces: the residual blocks of a branch and the
modules of a stage. Scanned, XLA compiles each piece once. The variables stay
where the unrolled network keeps them, under their own names: they are
stacked on the fly for the scan, and updated statistics are written back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# model.scan -> (scan the alike blocks of a branch, scan the alike modules of a stage)
SCAN_MODES = {"none": (False, False), "blocks": (True, False), "modules": (False, True),
              "all": (True, True)}


def auto_scan(backend: str | None = None) -> str:
    """What ``model.scan="auto"`` picks on ``backend`` (default: JAX's default backend).

    ``"blocks"`` on the CPU: each branch's alike residual blocks run as one
    loop and the modules stay unrolled. The unrolled network takes XLA's CPU
    backend more than twice as long to compile and runs slower there, and scanning
    the modules as well (``"all"``) nests the blocks' loops inside the
    modules' loop, a program slower to compile and to run (HRNet-W32 at
    batch 8 on a 2-core CPU, see README's Speed). On the CPU the
    convolutions inside the loops have their gradients written so that XLA's
    CPU backend runs them with Eigen (see :mod:`~hrnet_jax.models.cpu_convolution`).

    ``"none"`` elsewhere: compiled for an H100, the unrolled W32 train step
    runs 41% fewer kernels than the scanned one (4,836 against 8,186 in
    bfloat16 at batch 32; a loop slices its variables and stacks what the
    backward pass keeps, one small kernel each, every iteration) and XLA
    compiles both in the same time (``scripts/gpu_census.py``); a GPU step
    of thousands of small kernels is bound by launching them.
    """
    backend = jax.default_backend() if backend is None else backend
    return "blocks" if backend == "cpu" else "none"


def scan_mode(scan: str, backend: str | None = None) -> tuple[bool, bool]:
    """``(blocks, modules)``: which repeats ``model.scan`` runs as one ``lax.scan``
    (``"auto"``: :func:`auto_scan` of ``backend``)."""
    if scan == "auto":
        scan = auto_scan(backend)
    if scan not in SCAN_MODES:
        raise ValueError(f"model.scan: expected 'auto' or one of {sorted(SCAN_MODES)}, "
                         f"got {scan!r}")
    return SCAN_MODES[scan]


def scan_name(scan: str, backend: str | None = None) -> str:
    """The ``model.scan`` mode that ``scan`` names on ``backend`` (``"auto"`` as the one
    it picks)."""
    blocks_modules = scan_mode(scan, backend)
    return next(k for k, v in SCAN_MODES.items() if v == blocks_modules)


def scan_apply(module: nn.Module, variables: Sequence[Any], carry: Any, train: bool
                ) -> tuple[Any, list[Any] | None]:
    """Applies the unbound ``module`` once per entry of ``variables``, in one ``lax.scan``.

    ``variables`` are the ``{'params', 'batch_stats'}`` of identical modules
    (same shapes); each application takes the previous one's output. XLA then
    compiles the module once instead of once per copy, which makes the program
    several times smaller. Returns the last output and, in training, each
    copy's updated ``batch_stats``.
    """
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *variables)
    # The convolutions compute in the module's dtype: cast their kernels once for
    # every copy here, not once per iteration inside the loop (the same values).
    dtype = getattr(module, "dtype", None)
    if dtype is not None:
        stacked["params"] = jax.tree_util.tree_map_with_path(
            lambda path, leaf: leaf.astype(dtype) if path[-1].key == "kernel" else leaf,
            stacked["params"])

    def body(x, v):
        if train:
            y, updates = module.apply(v, x, train=True, mutable=["batch_stats"])
            return y, updates["batch_stats"]
        return module.apply(v, x, train=False), None

    carry, stats = jax.lax.scan(body, carry, stacked)
    if not train:
        return carry, None
    return carry, [jax.tree.map(lambda leaf, k=k: leaf[k], stats) for k in range(len(variables))]


def _child_variables(module: nn.Module, name: str) -> dict[str, Any]:
    return {c: module.variables[c][name] for c in ("params", "batch_stats")}


def run_stacked(parent: nn.Module, template: nn.Module, names: Sequence[str], carry: Any,
                 train: bool) -> Any:
    """``carry`` through the children ``names`` of ``parent`` (all like ``template``), scanned.

    The children's variables stay where the unrolled network keeps them,
    under their own names; updated statistics are written back there.
    """
    carry, stats = scan_apply(template, [_child_variables(parent, n) for n in names], carry,
                               train)
    if stats is not None:
        for name, value in zip(names, stats, strict=True):
            parent.put_variable("batch_stats", name, value)
    return carry
