"""The pmap'd train step, and BatchNorm statistics averaged over devices.

The train step runs under ``jax.pmap`` with the axis name
:data:`hrnet_jax.parallel.AXIS`, on one device or many alike. Gradients are
averaged over devices with ``pmean``, so a step on D devices with per-device
batch b equals a step on one device with batch D * b when BatchNorm
statistics are synchronised (``train.sync_batch_stats``); without it each
device normalises with its own batch statistics, as the reference's
``DataParallel`` does.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from hrnet_jax.config import Config
from hrnet_jax.evaluation import pck_sums
from hrnet_jax.losses import loss_from_config
from hrnet_jax.models import build_model
from hrnet_jax.parallel import AXIS
from hrnet_jax.train.state import TrainState, make_optimizer, step_schedule


def make_train_step(cfg: Config, *, return_output: bool = False) -> Callable:
    """:func:`train_step_body` ``pmap``'d over the local devices with the axis name ``AXIS``.

    The state is not donated: Adam's update reads each convolution kernel (and
    its moments) in the layout its gradient comes in, so XLA cannot write the
    new value over the donated old one and copies every such leaf into place
    instead (compiled for an H100, 879 of the W32 bfloat16 step's 6,309
    kernels). A new state costs the size of one state (0.35 GiB for W32).
    """
    return jax.pmap(train_step_body(cfg, return_output=return_output), axis_name=AXIS)


def train_step_body(cfg: Config, *, return_output: bool = False) -> Callable:
    """``step(state, images, target, target_weight, lr_boundaries) -> (state, metrics)`` of
    one device, to run where the device axis ``AXIS`` is bound (``make_train_step``'s pmap).

    One device's arguments: images (b, 3, H, W), target (b, J, h, w),
    target_weight (b, J, 1), lr_boundaries (K,) int32 from
    :func:`~hrnet_jax.train.state.lr_boundaries`; under the pmap each carries a
    leading device axis (D, b, 3, H, W).
    The optimiser is ``make_optimizer(cfg, step_schedule(cfg, lr_boundaries))``:
    with the boundaries passed as data, not compiled in, one program serves
    every dataset size, and the benchmark's program is training's.
    ``metrics`` (replicated) holds ``loss`` (device mean), ``acc_sum`` and
    ``acc_count`` (PCK weighted by counted joints, as the reference's meter)
    and ``lr`` (the rate this step used); with ``return_output`` also the
    step's heatmaps as ``output`` (for debug pictures).
    """
    axis = AXIS if cfg.train.sync_batch_stats else None
    model = build_model(cfg, bn_axis_name=axis)
    criterion = loss_from_config(cfg)

    def step(state: TrainState, images, target, target_weight, lr_boundaries):
        def objective(params):
            output, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, images,
                train=True, mutable=["batch_stats"])
            return criterion(output, target, target_weight), (output, updates["batch_stats"])

        (loss, (output, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params)
        grads = jax.lax.pmean(grads, AXIS)
        schedule = step_schedule(cfg, lr_boundaries)
        updates, opt_state = make_optimizer(cfg, schedule).update(
            grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1,
                                  params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state, batch_stats=batch_stats)
        acc_sum, acc_count = pck_sums(output, target)
        metrics = {
            "loss": jax.lax.pmean(loss, AXIS),
            "acc_sum": acc_sum,
            "acc_count": acc_count,
            "lr": schedule(state.step),
        }
        if return_output:
            metrics["output"] = output
        return new_state, metrics

    return step


def sync_batch_stats(state: TrainState) -> TrainState:
    """Averages the per-device BatchNorm running statistics over every device of every
    process (before evaluation and saving)."""
    if jax.device_count() == 1:
        return state
    mean = jax.pmap(lambda x: jax.lax.pmean(x, AXIS), axis_name=AXIS)(state.batch_stats)
    return state.replace(batch_stats=mean)
