"""Validation as the reference runs it: the pmap'd eval step (flip test, final
predictions, loss and PCK), a pass over the validation set, the dataset's table."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax import logs
from hrnet_jax.config import Config
from hrnet_jax.data.registry import dataset_keypoints
from hrnet_jax.decode import get_final_preds
from hrnet_jax.forward import predict_heatmaps
from hrnet_jax.losses import loss_from_config
from hrnet_jax.metrics import pck_accuracy
from hrnet_jax.models import build_model
from hrnet_jax.parallel import AXIS, prefetch_to_devices, replicate, shard_to_devices
from hrnet_jax.workdir import RESULTS_FILE


@dataclasses.dataclass
class Evaluation:
    """One pass over the validation set.

    Attributes:
      preds: (N, J, 3) per record in dataset order: x, y in original-image
        pixels (0-based) and the heatmap maximum.
      loss: mean loss over the records.
      accuracy: PCK on heatmaps, weighted as the reference's meter.
      table: the dataset's ordered table (MPII: Head .. Mean, Mean@0.1, extras;
        COCO: AP .. AR (L)), or None for a split without ground truth.
      headline: the name of the table's entry that ranks models (MPII
        ``Mean``, COCO ``AP``).
    """

    preds: np.ndarray
    loss: float
    accuracy: float
    table: dict[str, Any] | None
    headline: str = "Mean"

    @property
    def score(self) -> float | None:
        """The headline entry of the table (None without a table)."""
        return None if self.table is None else float(self.table[self.headline])

    def scalars(self) -> dict[str, float]:
        """The table's scalar entries (curves and per-joint arrays left out)."""
        return {k: float(v) for k, v in (self.table or {}).items() if np.ndim(v) == 0}


def pck_sums(output: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inside a pmap'd step: PCK summed over the joints it counts, and their number,
    each added up over the devices (the reference's accuracy meter, weighted)."""
    _, avg_acc, cnt, _ = pck_accuracy(output, target)
    return jax.lax.psum(avg_acc * cnt, AXIS), jax.lax.psum(cnt, AXIS)


def make_eval_step(cfg: Config, *, flip_test: bool | None = None, decode: str | None = None,
                   post_process: bool | None = None) -> Callable:
    """:func:`eval_step_body` ``pmap``'d over the local devices with the axis name ``AXIS``."""
    return jax.pmap(eval_step_body(cfg, flip_test=flip_test, decode=decode,
                                   post_process=post_process), axis_name=AXIS)


def eval_step_body(cfg: Config, *, flip_test: bool | None = None, decode: str | None = None,
                   post_process: bool | None = None) -> Callable:
    """``step(variables, images, target, target_weight, center, scale, valid)`` of one
    device, to run where the device axis ``AXIS`` is bound (``make_eval_step``'s pmap).

    With the flip test the heatmaps are the mean of the image's and of its
    mirror's (flipped back, shifted one column when ``test.shift_heatmap``),
    as the reference validates (in two network calls; one call on a batch of
    2N with ``test.join_mirrors``). Returns ``(outputs, sums)``: ``outputs`` holds
    per-sample ``preds`` (b, J, 2) in original-image pixels and ``maxvals``
    (b, J, 1) (with a leading device axis D under the pmap); ``sums``
    (replicated) ``loss_sum`` and ``count`` over valid samples and PCK's
    ``acc_sum`` and ``acc_count``. Padding (``valid`` False) counts in
    neither. Keypoints are decoded with ``decode`` (default ``test.decode``;
    ``post_process=False`` is the reference's spelling of ``"argmax"``),
    mirrored joints paired by the dataset's flip pairs.
    """
    model = build_model(cfg)
    flip = cfg.test.flip_test if flip_test is None else flip_test
    if decode is None:
        decode = cfg.test.decode if post_process is None or post_process else "argmax"
    flip_pairs = dataset_keypoints(cfg).flip_pairs if flip else ()
    blur_kernel = int(cfg.test.blur_kernel)
    shift = bool(cfg.test.shift_heatmap)
    join_mirrors = bool(cfg.test.join_mirrors)
    criterion = loss_from_config(cfg)

    def per_sample_loss(output, target, target_weight):
        return criterion(output[None], target[None], target_weight[None])

    def step(variables, images, target, target_weight, center, scale, valid):
        # The image and its mirror in two network calls, as the reference validates,
        # unless test.join_mirrors.
        output = predict_heatmaps(model, variables, images, flip_test=flip, flip_pairs=flip_pairs,
                                  shift=shift, join_mirrors=join_mirrors)
        preds, maxvals = get_final_preds(output, center, scale, decode=decode,
                                         blur_kernel=blur_kernel)
        mask = valid.astype(jnp.float32)
        losses = jax.vmap(per_sample_loss)(output, target, target_weight)
        # An all-zero target has no positive maximum, so PCK does not count it.
        acc_sum, acc_count = pck_sums(output, target * mask[:, None, None, None])
        sums = {
            "loss_sum": jax.lax.psum(jnp.sum(losses * mask), AXIS),
            "count": jax.lax.psum(jnp.sum(mask), AXIS),
            "acc_sum": acc_sum,
            "acc_count": acc_count,
        }
        return {"preds": preds, "maxvals": maxvals, "output": output}, sums

    return step


def predict_dataset(eval_step: Callable, variables: Any, batches: Iterable, num_records: int,
                    num_joints: int, *, show_progress: bool = True,
                    total_batches: int | None = None) -> tuple[np.ndarray, float, float]:
    """Runs ``eval_step`` over padded batches; returns (preds (N, J, 3), loss, accuracy).

    Each batch is the loader's ``(input, target, target_weight, meta)``;
    ``meta['index']`` places each valid sample's prediction, ``meta['valid']``
    marks padding. Several hosts each predict their shard and the predictions
    are gathered, so every host returns all N.
    """
    preds = np.zeros((num_records, num_joints, 3), np.float32)
    filled = np.zeros((num_records,), bool)
    sums = {"loss_sum": 0.0, "count": 0.0, "acc_sum": 0.0, "acc_count": 0.0}
    pending = []
    bar = logs.progress(total_batches or 0, desc="valid") if show_progress else None
    placed_batches = prefetch_to_devices(batches, _place_eval_batch)
    try:
        for arrays, (_, _, _, meta) in placed_batches:
            outputs, batch_sums = eval_step(variables, *arrays)
            # Keep the device busy: fetch the previous batch's results while this one runs.
            pending.append((outputs["preds"], outputs["maxvals"], batch_sums,
                            np.asarray(meta["index"]), np.asarray(meta["valid"], bool)))
            if len(pending) > 1:
                _collect(pending.pop(0), preds, filled, sums)
            if bar is not None:
                bar.update(1)
    finally:
        placed_batches.close()
    while pending:
        _collect(pending.pop(0), preds, filled, sums)
    if bar is not None:
        bar.close()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        all_preds = multihost_utils.process_allgather(preds)
        all_filled = multihost_utils.process_allgather(filled)
        preds = np.sum(np.where(all_filled[..., None, None], all_preds, 0.0), axis=0)
        filled = np.any(all_filled, axis=0)
    if not filled.all():
        missing = np.flatnonzero(~filled)
        raise RuntimeError(f"evaluation saw {filled.sum()} of {num_records} records; "
                           f"missing indices start {missing[:5].tolist()}")
    loss = sums["loss_sum"] / max(sums["count"], 1.0)
    accuracy = sums["acc_sum"] / max(sums["acc_count"], 1.0)
    return preds, float(loss), float(accuracy)


def _place_eval_batch(batch: Any) -> tuple[Any, ...]:
    """The eval step's arguments after the variables, split over and placed on the local devices."""
    images, target, target_weight, meta = batch
    return shard_to_devices((images, target, target_weight, meta["center"], meta["scale"],
                             np.asarray(meta["valid"], bool)))


def _collect(item, preds, filled, sums) -> None:
    batch_preds, batch_maxvals, batch_sums, index, valid = item
    batch_preds = np.asarray(batch_preds).reshape((-1,) + batch_preds.shape[2:])
    batch_maxvals = np.asarray(batch_maxvals).reshape((-1,) + batch_maxvals.shape[2:])
    rows = index[valid]
    preds[rows, :, :2] = batch_preds[valid]
    preds[rows, :, 2:3] = batch_maxvals[valid]
    filled[rows] = True
    host_sums = jax.device_get(batch_sums)
    for key in sums:
        sums[key] += float(np.asarray(host_sums[key])[0])


def evaluate(eval_step: Callable, variables: Any, loader: Any, *,
             output_dir: str | None = None, **kwargs: Any) -> Evaluation:
    """:func:`predict_dataset` over ``loader``, then its dataset's evaluation.

    ``loader.dataset`` scores the predictions (:meth:`~hrnet_jax.data.base.JointsDataset.evaluate`)
    and, with ``output_dir``, writes its prediction files there (on the first
    host only).
    """
    dataset = loader.dataset
    preds, loss, accuracy = predict_dataset(eval_step, variables, loader, len(dataset),
                                            dataset.spec.num_joints, **kwargs)
    table = dataset.evaluate(preds, output_dir if jax.process_index() == 0 else None)
    return Evaluation(preds=preds, loss=loss, accuracy=accuracy, table=table,
                      headline=dataset.headline_metric)


def validate(cfg: Config, variables: Any, *, flip_test: bool | None = None,
             decode: str | None = None, post_process: bool | None = None,
             output_dir: str | None = None, show_progress: bool = True,
             log: Callable[[str], None] | None = print) -> Evaluation:
    """Evaluates host ``variables`` on ``cfg``'s validation set (``dataset.test_set``).

    The flip test and the decoder follow ``cfg.test`` unless given here
    (``post_process=False`` is the reference's spelling of ``decode="argmax"``).
    ``output_dir`` receives the dataset's prediction files (MPII ``pred.mat``,
    COCO ``results/keypoints_<set>_results_0.json``). ``log`` (None: silent)
    hears when the eval step compiles and how long it took.
    """
    from hrnet_jax import data as data_lib
    from hrnet_jax.compilation import announce_compilation, describe_step

    batch = cfg.test.batch_size_per_device * jax.local_device_count()
    eval_step = announce_compilation(
        make_eval_step(cfg, flip_test=flip_test, decode=decode, post_process=post_process),
        describe_step("eval step", cfg, batch), log or (lambda line: None))
    variables_r = replicate({"params": variables["params"],
                             "batch_stats": variables["batch_stats"]})
    with data_lib.build_loader(cfg, "valid", batch_size=batch) as loader:
        return evaluate(eval_step, variables_r, loader, output_dir=output_dir,
                        show_progress=show_progress, total_batches=len(loader))


def write_results(result: Evaluation, out_dir: str | os.PathLike,
                  info: dict[str, Any] | None = None) -> str:
    """Writes ``results.json`` into ``out_dir`` (the table, curves included, the loss,
    the accuracy and ``info``); returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    table = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
             for k, v in (result.table or {}).items()}
    json_path = os.path.join(out_dir, RESULTS_FILE)
    with open(json_path, "w") as f:
        json.dump({"table": table, "headline": result.headline, "loss": result.loss,
                   "accuracy": result.accuracy, **(info or {})}, f, indent=2)
    return json_path
