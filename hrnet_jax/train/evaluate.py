"""Validation as the reference runs it: flip test, final predictions, the MPII PCKh table."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
import scipy.io

from hrnet_jax.config import Config
from hrnet_jax.metrics import mpii_evaluate
from hrnet_jax.train import logs
from hrnet_jax.train.steps import shard


@dataclasses.dataclass
class Evaluation:
    """One pass over the validation set.

    Attributes:
      preds: (N, J, 3) per record in dataset order: x, y in original-image
        pixels (0-based) and the heatmap maximum.
      loss: mean loss over the records.
      accuracy: PCK on heatmaps, weighted as the reference's meter.
      table: ``mpii_evaluate``'s ordered dict (Head .. Mean, Mean@0.1, extras),
        or None when no ground truth was given.
    """

    preds: np.ndarray
    loss: float
    accuracy: float
    table: dict[str, Any] | None


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
    for images, target, target_weight, meta in batches:
        valid = np.asarray(meta["valid"], bool)
        outputs, batch_sums = eval_step(
            variables, *shard((images, target, target_weight, meta["center"], meta["scale"],
                               valid)))
        # Keep the device busy: fetch the previous batch's results while this one runs.
        pending.append((outputs["preds"], outputs["maxvals"], batch_sums,
                        np.asarray(meta["index"]), valid))
        if len(pending) > 1:
            _collect(pending.pop(0), preds, filled, sums)
        if bar is not None:
            bar.update(1)
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


def evaluate(eval_step: Callable, variables: Any, batches: Iterable, num_records: int,
             num_joints: int, gt: Any | None, **kwargs: Any) -> Evaluation:
    """:func:`predict_dataset`, then the MPII PCKh table against ``gt`` (gt_valid.mat)."""
    preds, loss, accuracy = predict_dataset(eval_step, variables, batches, num_records,
                                            num_joints, **kwargs)
    table = mpii_evaluate(preds[..., :2], gt) if gt is not None else None
    return Evaluation(preds=preds, loss=loss, accuracy=accuracy, table=table)


def validate(cfg: Config, variables: Any, *, flip_test: bool | None = None,
             post_process: bool | None = None, show_progress: bool = True,
             log: Callable[[str], None] | None = print) -> Evaluation:
    """Evaluates host ``variables`` on ``cfg``'s validation set (``dataset.test_set``).

    The flip test and the quarter-pixel refinement follow ``cfg.test`` unless
    given here. The PCKh table needs the split's ``gt_valid.mat``. ``log``
    (None: silent) hears when the eval step compiles and how long it took.
    """
    from hrnet_jax import data as data_lib
    from hrnet_jax.train.compilation import announce_compilation, describe_step
    from hrnet_jax.train.steps import make_eval_step, replicate

    batch = cfg.test.batch_size_per_device * jax.local_device_count()
    eval_step = announce_compilation(
        make_eval_step(cfg, flip_test=flip_test, post_process=post_process),
        describe_step("eval step", cfg, batch), log or (lambda line: None))
    variables_r = replicate({"params": variables["params"],
                             "batch_stats": variables["batch_stats"]})
    with data_lib.build_loader(cfg, "valid", batch_size=batch, seed=cfg.seed, shuffle=False,
                               workers=cfg.workers, prefetch=cfg.prefetch) as loader:
        return evaluate(eval_step, variables_r, loader, loader.dataset_size,
                        cfg.model.num_joints, data_lib.mpii_gt_path(cfg),
                        show_progress=show_progress, total_batches=len(loader))


def write_results(result: Evaluation, out_dir: str | os.PathLike,
                  info: dict[str, Any] | None = None) -> tuple[str, str]:
    """Writes ``pred.mat`` and ``results.json`` into ``out_dir``; returns their paths.

    ``pred.mat`` holds ``preds`` (N, J, 2): 1-based (MATLAB) pixel coordinates,
    the form the reference writes for the MPII evaluation toolkit.
    ``results.json`` holds the PCKh table (curve included), the loss, the
    accuracy and ``info``.
    """
    os.makedirs(out_dir, exist_ok=True)
    mat_path = os.path.join(out_dir, "pred.mat")
    scipy.io.savemat(mat_path, {"preds": result.preds[..., :2].astype(np.float64) + 1.0})
    table = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
             for k, v in (result.table or {}).items()}
    json_path = os.path.join(out_dir, "results.json")
    with open(json_path, "w") as f:
        json.dump({"pckh": table, "loss": result.loss, "accuracy": result.accuracy,
                   **(info or {})}, f, indent=2)
    return mat_path, json_path
