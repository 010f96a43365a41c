"""Saying what XLA is doing while a step compiles, and whether the persistent cache served it.

The first call of a jitted or pmap'd step traces and compiles it, which can
take minutes on a cold accelerator; :func:`announce_compilation` wraps a step
so that its first call says so before it starts and reports the seconds it
took and whether JAX's persistent compilation cache supplied the program.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import jax

_CACHE_EVENTS: collections.Counter[str] = collections.Counter()
_LISTENING = threading.Lock()
_listener_registered = False


def _on_event(event: str, **kwargs: Any) -> None:
    if event.startswith("/jax/compilation_cache/"):
        _CACHE_EVENTS[event.rsplit("/", 1)[-1]] += 1


def _listen() -> None:
    global _listener_registered
    with _LISTENING:
        if not _listener_registered:
            jax.monitoring.register_event_listener(_on_event)
            _listener_registered = True


def cache_counts() -> dict[str, int]:
    """Persistent-cache ``cache_hits`` and ``cache_misses`` seen so far in this process."""
    _listen()
    return {key: _CACHE_EVENTS[key] for key in ("cache_hits", "cache_misses")}


def cache_directory() -> str | None:
    """JAX's persistent compilation cache directory, or None when it is off."""
    return jax.config.jax_compilation_cache_dir or None


def device_summary() -> str:
    """``'1 x NVIDIA H200'``, ``'2 x cpu'``: this process's devices."""
    devices = jax.local_devices()
    return f"{len(devices)} x {devices[0].device_kind}"


def describe_step(kind: str, cfg: Any, batch: int) -> str:
    """``'train step (HRNet-W32 256x256, batch 32, bfloat16, scan blocks)'`` for the logs."""
    from hrnet_jax.models.scan import scan_name

    model = cfg.model
    scan = scan_name(model.scan)
    width, height = model.image_size
    return (f"{kind} (HRNet-W{model.stage2.num_channels[0]} {width}x{height}, batch {batch}, "
            f"{model.dtype}, scan {scan})")


def announce_compilation(step: Callable, what: str, log: Callable[[str], None]) -> Callable:
    """``step`` whose first call logs before and after compiling.

    Args:
      step: a jitted or pmap'd function.
      what: what it is, e.g. ``"train step (HRNet-W32, batch 32, bfloat16)"``.
      log: where the two lines go (a logger's ``info``, ``print``).

    Returns:
      A function with ``step``'s signature; from the second call on it is ``step``.
    """
    first = True

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal first
        if not first:
            return step(*args, **kwargs)
        first = False
        directory = cache_directory()
        where = (f"the persistent compilation cache is {directory}" if directory
                 else "the persistent compilation cache is off")
        log(f"=> compiling the {what} for {device_summary()}; {where}")
        before = cache_counts()
        start = time.perf_counter()
        out = step(*args, **kwargs)
        jax.block_until_ready(out)
        seconds = time.perf_counter() - start
        hit = cache_counts()["cache_hits"] > before["cache_hits"]
        how = "loaded from the persistent compilation cache" if hit else "compiled"
        log(f"=> {what} ready in {seconds:.1f} s ({how}; its first run included)")
        return out

    return call
