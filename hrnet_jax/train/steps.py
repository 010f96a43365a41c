"""The pmap'd train and evaluation steps.

Every step runs under ``jax.pmap`` with the axis name :data:`AXIS`, on one
device or many alike. Gradients are averaged over devices with ``pmean``, so
a step on D devices with per-device batch b equals a step on one device with
batch D * b when BatchNorm statistics are synchronised
(``train.sync_batch_stats``); without it each device normalises with its own
batch statistics, as the reference's ``DataParallel`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrnet_jax.config import Config
from hrnet_jax.data.registry import dataset_keypoints
from hrnet_jax.decode import fuse_flip, get_final_preds
from hrnet_jax.losses import joints_mse_loss, joints_ohkm_mse_loss
from hrnet_jax.metrics import pck_accuracy
from hrnet_jax.models import build_model
from hrnet_jax.train.state import TrainState

AXIS = "batch"


def loss_fn(cfg: Config) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """The configured heatmap loss: JointsMSE, or its OHKM variant with ``loss.use_ohkm``."""
    use_weight = bool(cfg.loss.use_target_weight)
    if cfg.loss.use_ohkm:
        topk = int(cfg.loss.topk)
        return lambda out, tgt, w: joints_ohkm_mse_loss(out, tgt, w, use_weight, topk=topk)
    return lambda out, tgt, w: joints_mse_loss(out, tgt, w, use_weight)


def _weighted_accuracy(output: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """PCK summed over the joints it counts, and their number, added up over devices."""
    _, avg_acc, cnt, _ = pck_accuracy(output, target)
    return jax.lax.psum(avg_acc * cnt, AXIS), jax.lax.psum(cnt, AXIS)


def make_train_step(cfg: Config, schedule: optax.Schedule, *,
                    return_output: bool = False) -> Callable:
    """``step(state, images, target, target_weight) -> (state, metrics)``, pmap'd.

    Arguments carry a leading device axis: images (D, b, 3, H, W), target
    (D, b, J, h, w), target_weight (D, b, J, 1). The state is donated.
    ``metrics`` (replicated) holds ``loss`` (device mean), ``acc_sum`` and
    ``acc_count`` (PCK weighted by counted joints, as the reference's meter)
    and ``lr`` (the rate this step used); with ``return_output`` also the
    step's heatmaps as ``output`` (for debug pictures).
    """
    axis = AXIS if cfg.train.sync_batch_stats else None
    model = build_model(cfg, bn_axis_name=axis)
    criterion = loss_fn(cfg)

    def step(state: TrainState, images, target, target_weight):
        def objective(params):
            output, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, images,
                train=True, mutable=["batch_stats"])
            return criterion(output, target, target_weight), (output, updates["batch_stats"])

        (loss, (output, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params)
        grads = jax.lax.pmean(grads, AXIS)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        acc_sum, acc_count = _weighted_accuracy(output, target)
        metrics = {
            "loss": jax.lax.pmean(loss, AXIS),
            "acc_sum": acc_sum,
            "acc_count": acc_count,
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
        }
        if return_output:
            metrics["output"] = output
        return new_state, metrics

    return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))


def make_eval_step(cfg: Config, *, flip_test: bool | None = None, decode: str | None = None,
                   post_process: bool | None = None) -> Callable:
    """``step(variables, images, target, target_weight, center, scale, valid)``, pmap'd.

    With the flip test the heatmaps are the mean of the image's and of its
    mirror's (flipped back, shifted one column when ``test.shift_heatmap``),
    as the reference validates. Returns ``(outputs, sums)``: ``outputs`` holds
    per-sample ``preds`` (D, b, J, 2) in original-image pixels and ``maxvals``
    (D, b, J, 1); ``sums`` (replicated) ``loss_sum`` and ``count`` over valid
    samples and PCK's ``acc_sum`` and ``acc_count``. Padding (``valid`` False)
    counts in neither. Keypoints are decoded with ``decode`` (default
    ``test.decode``; ``post_process=False`` is the reference's spelling of
    ``"argmax"``), mirrored joints paired by the dataset's flip pairs.
    """
    model = build_model(cfg)
    flip = cfg.test.flip_test if flip_test is None else flip_test
    if decode is None:
        decode = cfg.test.decode if post_process is None or post_process else "argmax"
    flip_pairs = dataset_keypoints(cfg).flip_pairs if flip else ()
    blur_kernel = int(cfg.test.blur_kernel)
    shift = bool(cfg.test.shift_heatmap)
    criterion = loss_fn(cfg)

    def per_sample_loss(output, target, target_weight):
        return criterion(output[None], target[None], target_weight[None])

    def step(variables, images, target, target_weight, center, scale, valid):
        output = model.apply(variables, images, train=False)
        if flip:
            flipped = model.apply(variables, jnp.flip(images, axis=3), train=False)
            output = fuse_flip(output, flipped, flip_pairs, shift=shift)
        preds, maxvals = get_final_preds(output, center, scale, decode=decode,
                                         blur_kernel=blur_kernel)
        mask = valid.astype(jnp.float32)
        losses = jax.vmap(per_sample_loss)(output, target, target_weight)
        # An all-zero target has no positive maximum, so PCK does not count it.
        acc_sum, acc_count = _weighted_accuracy(output, target * mask[:, None, None, None])
        sums = {
            "loss_sum": jax.lax.psum(jnp.sum(losses * mask), AXIS),
            "count": jax.lax.psum(jnp.sum(mask), AXIS),
            "acc_sum": acc_sum,
            "acc_count": acc_count,
        }
        return {"preds": preds, "maxvals": maxvals, "output": output}, sums

    return jax.pmap(step, axis_name=AXIS)


def sync_batch_stats(state: TrainState) -> TrainState:
    """Averages the per-device BatchNorm running statistics over every device of every
    process (before evaluation and saving)."""
    if jax.device_count() == 1:
        return state
    mean = jax.pmap(lambda x: jax.lax.pmean(x, AXIS), axis_name=AXIS)(state.batch_stats)
    return state.replace(batch_stats=mean)


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
