"""Spreading batches and train states over the local devices, as ``jax.pmap`` takes them.

Every pmap'd step (training and evaluation) names its device axis :data:`AXIS`;
arrays carry a leading device axis D.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

AXIS = "batch"


def shard(batch: Any, num_devices: int | None = None) -> Any:
    """Splits the leading axis of every array into (devices, per-device batch)."""
    d = num_devices or jax.local_device_count()

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % d:
            raise ValueError(f"batch of {x.shape[0]} does not split evenly over {d} devices")
        return x.reshape((d, x.shape[0] // d) + x.shape[1:])

    return jax.tree.map(split, batch)


def _device_axis_sharding(devices: Sequence[Any]) -> jax.sharding.NamedSharding:
    # The mesh pmap gives its outputs: inputs placed alike keep the step's
    # signature, and so its compiled program, the same from the first call on.
    mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def put_sharded(tree: Any, devices: Sequence[Any] | None = None) -> Any:
    """Places arrays of shape (D, ...) on D devices, slice d on device d (as pmap expects)."""
    sharding = _device_axis_sharding(list(devices or jax.local_devices()))
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def shard_to_devices(batch: Any) -> Any:
    """Splits the leading axis of every array over the local devices and places slice d
    on device d: a host batch of (B, ...) arrays becomes what pmap takes, (D, B / D, ...)."""
    devices = jax.local_devices()
    return put_sharded(shard(batch, len(devices)), devices)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def prefetch_to_devices(batches: Iterable[Any], place: Callable[[Any], Any], *,
                        size: int = 2) -> Iterator[tuple[Any, Any]]:
    """Yields ``(place(batch), batch)`` for each of ``batches``, in order, with a
    background thread reading and placing up to ``size`` batches ahead.

    A step on a GPU holds the calling thread until its kernels are launched;
    the thread fetches the next batch and copies it to the devices meanwhile,
    so the loop waits only for batches not ready in time. An exception raised
    while reading or placing is raised here, at the batch it concerns. Close
    the generator (``contextlib.closing``) to stop early: the thread stops
    after the batch it is reading and closes the iterator of ``batches``.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(batches)
        try:
            for batch in source:
                if not hand_over((place(batch), batch)):
                    return
            hand_over(_END)
        except BaseException as error:  # raised again in the consumer, at this batch
            hand_over(_Failed(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="hrnet_jax device prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def replicate(tree: Any, devices: Sequence[Any] | None = None) -> Any:
    """Copies a pytree onto every device (default: the local ones) along a leading axis."""
    devices = list(devices or jax.local_devices())
    n = len(devices)
    stacked = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x)[None], (n,) + np.shape(x)), tree)
    return put_sharded(stacked, devices)


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a replicated pytree, on the host."""
    return jax.device_get(jax.tree.map(lambda x: x[0], tree))
