"""Spreading batches and train states over the local devices, as ``jax.pmap`` takes them.

Every pmap'd step (training and evaluation) names its device axis :data:`AXIS`;
arrays carry a leading device axis D.
"""

from __future__ import annotations

from collections.abc import Sequence
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
