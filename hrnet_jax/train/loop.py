"""The training run: epochs of pmap'd steps, validation, checkpoints and resume.

:func:`train` is the whole of ``scripts/train.py``: it prepares the data,
builds or restores the train state, and alternates training epochs with
flip-test validation, as the reference's ``tools/train.py`` does. Rerunning
it on the same work directory resumes from the newest complete checkpoint
with the same step, optimizer state, learning rate and data order.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from hrnet_jax import config as config_lib
from hrnet_jax import data as data_lib
from hrnet_jax.config import Config
from hrnet_jax.data.registry import prepare_dataset
from hrnet_jax.metrics import format_table
from hrnet_jax.model_file import save_model
from hrnet_jax.train import logs
from hrnet_jax.train.checkpoint import Checkpoints
from hrnet_jax.train.compilation import announce_compilation, describe_step
from hrnet_jax.train.evaluate import Evaluation, evaluate
from hrnet_jax.train.preemption import StopRequest
from hrnet_jax.train.state import create_train_state, init_variables
from hrnet_jax.train.steps import (
    make_eval_step,
    make_train_step,
    put_sharded,
    replicate,
    shard,
    sync_batch_stats,
    unreplicate,
)

CHECKPOINT_DIR = "checkpoints"
BEST_MODEL_DIR = "model_best"
FINAL_MODEL_DIR = "final_model"

__all__ = ["train", "TrainResult", "TrainingDiverged", "prepare_data", "prepare_dataset"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) run reached."""

    workdir: str
    step: int
    epoch: int
    best_perf: float | None
    last_evaluation: Evaluation | None
    # The signal ("SIGTERM", "SIGINT") that stopped the run early, after a checkpoint.
    stopped_by: str | None = None


def _prefetch(loader: Any, size: int = 2) -> Iterator[tuple[Any, Any]]:
    """Yields (device arrays, host batch), keeping ``size`` batches on the devices ahead."""
    devices = jax.local_devices()
    queue: collections.deque = collections.deque()
    for batch in loader:
        images, target, target_weight, _ = batch
        arrays = shard((images, target, target_weight), len(devices))
        queue.append((put_sharded(arrays, devices), batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def prepare_data(cfg: Config) -> str:
    """Readies the dataset (:func:`~hrnet_jax.data.registry.prepare_dataset`), first in
    process 0 and then in the others, so that processes sharing a disk do not
    generate a synthetic set at the same time. Returns its root."""
    if jax.process_count() == 1:
        return prepare_dataset(cfg)
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        prepare_dataset(cfg)
    multihost_utils.sync_global_devices("hrnet_jax: dataset prepared")
    return prepare_dataset(cfg)


def _load_pretrained(cfg: Config, variables: dict, path: str, logger) -> dict:
    from hrnet_jax.convert import load_pretrained_backbone, read_torch_checkpoint

    variables, report = load_pretrained_backbone(variables, read_torch_checkpoint(path), cfg)
    logger.info(f"=> backbone from {path}: {len(report['loaded'])} tensors loaded, "
                f"{len(report['left_at_init'])} left at initialisation, "
                f"{len(report['ignored'])} checkpoint keys ignored")
    return variables


class _EpochMeter:
    """Per-epoch averages of the step metrics, fetched from the devices only when logged."""

    def __init__(self, epoch: int, steps_per_epoch: int, batch_size: int) -> None:
        self.epoch = epoch
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.pending: list[Any] = []
        self.step_time = logs.Average()
        self.data_time = logs.Average()
        self.loss = logs.Average()
        self.accuracy = logs.Average()
        self.lr = float("nan")
        self._since = time.perf_counter()
        self._untimed = 0  # pending steps whose time is not a step's (compilation)

    def add(self, metrics: Any, data_seconds: float) -> None:
        self.pending.append(metrics)
        self.data_time.update(data_seconds)

    def leave_out_of_timing(self) -> None:
        """The step just added compiled first: its time is not counted in Time or Speed."""
        self._untimed += 1
        self._since = time.perf_counter()

    def flush(self, step: int, index: int, checkpoints: Checkpoints) -> str:
        """Fetches the pending metrics (one host sync) and returns the log line.

        Raises:
          TrainingDiverged: one of the pending losses is not finite.
        """
        host = jax.device_get(self.pending)
        now = time.perf_counter()
        timed = len(host) - self._untimed
        per_step = (now - self._since) / timed if timed else None
        self._since, self._untimed = now, 0
        first = step - len(host) + 1
        self.pending = []
        for i, m in enumerate(host):
            loss = float(m["loss"][0])
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss} at step {first + i} (epoch {self.epoch}); "
                    f"stopping. The newest checkpoint (step {checkpoints.latest_step()}) in "
                    f"{checkpoints.directory} predates it: lower train.lr or check the data, "
                    "then rerun to resume from there")
            if per_step is not None and i >= len(host) - timed:
                self.step_time.update(per_step)
            self.loss.update(loss, self.batch_size)
            count = float(m["acc_count"][0])
            if count > 0:
                self.accuracy.update(float(m["acc_sum"][0]) / count, count)
        self.lr = float(host[-1]["lr"][0])
        return logs.train_line(self.epoch, index, self.steps_per_epoch,
                               step_time=self.step_time, data_time=self.data_time,
                               loss=self.loss, accuracy=self.accuracy,
                               batch_size=self.batch_size)

    def scalars(self) -> dict[str, float]:
        return {"train_loss": self.loss.value, "train_acc": self.accuracy.value, "lr": self.lr}


class _Run:
    """The mutable bookkeeping of one :func:`train` call."""

    def __init__(self, cfg: Config, workdir: str, logger, total_steps: int,
                 steps_per_epoch: int, batch_size: int, checkpoints: Checkpoints,
                 scalars: logs.Scalars) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.logger = logger
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.checkpoints = checkpoints
        self.scalars = scalars
        self.best_perf: float | None = None
        self.best_step: int | None = None
        self.is_main = jax.process_index() == 0

    def record(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "loader": {"epoch": step // self.steps_per_epoch,
                       "batch": step % self.steps_per_epoch},
            "best_perf": self.best_perf,
            "best_step": self.best_step,
        }

    def flush(self, meter: _EpochMeter, step: int, index: int) -> None:
        """Logs the metrics of the steps since the last flush."""
        if meter.pending:
            self.logger.info(meter.flush(step, index, self.checkpoints))
            self.scalars.write(step, meter.scalars())

    def sync(self, state_r: Any) -> Any:
        """Per-device BatchNorm statistics averaged, before validating or saving."""
        return state_r if self.cfg.train.sync_batch_stats else sync_batch_stats(state_r)

    def save_debug_images(self, name: str, batch: Any, metrics: Any) -> None:
        """The reference's four debug pictures of a batch, in ``workdir/debug``."""
        from hrnet_jax import vis
        from hrnet_jax.decode import get_max_preds

        images, target, _, meta = batch
        output = np.asarray(metrics["output"]).reshape(target.shape)
        preds, _ = get_max_preds(output)
        stride = (np.asarray(self.cfg.model.image_size, np.float32)
                  / np.asarray(self.cfg.model.heatmap_size, np.float32))
        directory = os.path.join(self.workdir, "debug")
        os.makedirs(directory, exist_ok=True)
        vis.save_debug_images(os.path.join(directory, name), images, meta, target,
                              np.asarray(preds) * stride, output)

    def save(self, state_r: Any, step: int) -> None:
        """Checkpoints ``step`` once (statistics synchronised by the caller)."""
        if self.checkpoints.latest_step() != step:
            self.checkpoints.save(step, unreplicate(state_r), self.record(step))


def train(cfg: Config, workdir: str | os.PathLike, *, max_steps: int | None = None,
          pretrained: str | None = None, show_progress: bool = True) -> TrainResult:
    """Trains (or resumes training) ``cfg`` in ``workdir``.

    Args:
      cfg: the experiment. Its dataset (``dataset.name``, see
        :mod:`hrnet_jax.data.registry`) must exist, or is generated once (the
        synthetic sets).
      workdir: holds ``checkpoints/``, ``model_best/``, ``final_model/``,
        ``train.log``, ``metrics.jsonl`` and TensorBoard files.
      max_steps: stop after this many steps in all (counting those of the run
        being resumed); None trains to ``train.end_epoch``.
      pretrained: a reference ImageNet HRNet ``.pth`` to start the backbone
        from (``model.pretrained_layers``); ignored when resuming.
      show_progress: show progress bars on a terminal.

    Returns:
      A :class:`TrainResult`.

    Raises:
      TrainingDiverged: the loss became NaN or infinite.
      FileNotFoundError: the dataset is missing (the message says where it goes).
    """
    workdir = os.path.abspath(os.fspath(workdir))
    main_process = jax.process_index() == 0
    logger = logs.get_logger(workdir if main_process else None, quiet=not main_process)
    show_progress = show_progress and main_process
    num_devices = jax.local_device_count()
    train_batch = cfg.train.batch_size_per_device * num_devices
    valid_batch = cfg.test.batch_size_per_device * num_devices
    prepare_data(cfg)

    train_loader = data_lib.build_loader(cfg, "train", batch_size=train_batch, seed=cfg.seed,
                                         shuffle=cfg.train.shuffle, workers=cfg.workers,
                                         prefetch=cfg.prefetch)
    valid_loader = data_lib.build_loader(cfg, "valid", batch_size=valid_batch, seed=cfg.seed,
                                         shuffle=False, workers=cfg.workers,
                                         prefetch=cfg.prefetch)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"the training set is smaller than one batch of {train_batch} "
                         f"({num_devices} device(s) x train.batch_size_per_device)")
    total_steps = cfg.train.end_epoch * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))

    variables = init_variables(cfg, jax.random.key(cfg.seed))
    state, schedule = create_train_state(cfg, variables, steps_per_epoch)
    checkpoints = Checkpoints(os.path.join(workdir, CHECKPOINT_DIR),
                              keep=cfg.train.keep_checkpoints)
    scalars = logs.Scalars(workdir, enabled=jax.process_index() == 0, logger=logger)
    run = _Run(cfg, workdir, logger, total_steps, steps_per_epoch, train_batch, checkpoints,
               scalars)

    latest = checkpoints.latest_step()
    if latest is not None:
        state, record = checkpoints.restore(state)
        for skipped, reason in checkpoints.skipped:
            logger.info(f"=> WARNING: the checkpoint of step {skipped} in {checkpoints.directory} "
                        f"cannot be restored ({reason}); moved to "
                        f"{checkpoints.set_aside_directory}, resuming from an older one")
        if record.get("steps_per_epoch") != steps_per_epoch:
            raise ValueError(
                f"{checkpoints.directory}: the run being resumed had "
                f"{record.get('steps_per_epoch')} steps per epoch, this one has "
                f"{steps_per_epoch} (batch size, device count or dataset changed); resume with "
                "the same settings or use a new --workdir")
        run.best_perf, run.best_step = record.get("best_perf"), record.get("best_step")
        logger.info(f"=> resuming from {checkpoints.directory} at step {int(state.step)} "
                    f"(epoch {record['epoch']})")
    else:
        if pretrained:
            variables = _load_pretrained(cfg, variables, pretrained, logger)
            state, schedule = create_train_state(cfg, variables, steps_per_epoch)
        if run.is_main:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                json.dump(config_lib.to_dict(cfg), f, indent=2, sort_keys=True)
        processes = (f" in each of {jax.process_count()} processes (global batch "
                     f"{train_batch * jax.process_count()})" if jax.process_count() > 1 else "")
        logger.info(f"=> training {cfg.model.name} on {cfg.dataset.name} "
                    f"({train_loader.dataset_size} "
                    f"samples, {steps_per_epoch} steps per epoch, batch {train_batch} on "
                    f"{num_devices} device(s){processes}) into {workdir}")

    train_step = announce_compilation(make_train_step(cfg, schedule, return_output=cfg.debug),
                                      describe_step("train step", cfg, train_batch), logger.info)
    eval_step = announce_compilation(make_eval_step(cfg),
                                     describe_step("eval step", cfg, valid_batch), logger.info)
    headline = valid_loader.dataset.headline_metric
    step = int(state.step)
    state_r = replicate(state)
    del state
    last_eval: Evaluation | None = None
    last_eval_step = -1
    compiled = False

    def run_validation(state_r: Any, step: int) -> tuple[Any, Evaluation]:
        """Validates ``state_r`` (statistics already synchronised); keeps the best model."""
        variables_r = {"params": state_r.params, "batch_stats": state_r.batch_stats}
        valid_loader.set_state({"epoch": 0, "batch": 0})
        result = evaluate(eval_step, variables_r, valid_loader,
                          output_dir=workdir if run.is_main else None,
                          show_progress=show_progress, total_batches=len(valid_loader))
        logger.info(f"Test: step {step}\tLoss {result.loss:.5f}\tAccuracy {result.accuracy:.3f}")
        if result.table is not None:
            logger.info(format_table(result.table, cfg.model.name))
        scalars.write(step, {"valid_loss": result.loss, "valid_acc": result.accuracy,
                             **{f"valid/{k}": v for k, v in result.scalars().items()}})
        perf = result.score
        if perf is not None and (run.best_perf is None or perf > run.best_perf):
            run.best_perf, run.best_step = perf, step
            if run.is_main:
                save_model(os.path.join(workdir, BEST_MODEL_DIR), unreplicate(variables_r), cfg)
            logger.info(f"=> best so far: {headline} {perf:.3f} at step {step}, "
                        f"saved to {os.path.join(workdir, BEST_MODEL_DIR)}")
        return state_r, result

    # Processes would stop at different steps and wait for each other forever: a
    # multi-process run keeps the default signal behaviour (see README).
    stop = StopRequest()
    if jax.process_count() == 1:
        stop.install()
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            start = step % steps_per_epoch
            train_loader.set_state({"epoch": epoch, "batch": start})
            meter = _EpochMeter(epoch, steps_per_epoch, train_batch)
            bar = logs.progress(steps_per_epoch, start, f"epoch {epoch}") if show_progress \
                else None
            t_fetch = time.perf_counter()

            for arrays, batch in _prefetch(train_loader):
                data_seconds = time.perf_counter() - t_fetch
                state_r, metrics = train_step(state_r, *arrays)
                meter.add(metrics, data_seconds)
                if not compiled:
                    meter.leave_out_of_timing()
                    compiled = True
                step += 1
                index = step - epoch * steps_per_epoch
                if bar is not None:
                    bar.update(1)
                if index % cfg.print_freq == 0 or index == steps_per_epoch \
                        or step == total_steps:
                    run.flush(meter, step, index)
                    if cfg.debug and run.is_main:
                        run.save_debug_images(f"train_{epoch}_{index}", batch, metrics)
                every = cfg.train.checkpoint_every_steps
                if every and step % every == 0:
                    run.flush(meter, step, index)
                    state_r = run.sync(state_r)
                    run.save(state_r, step)
                if step >= total_steps or stop.requested:
                    break
                t_fetch = time.perf_counter()
            if bar is not None:
                bar.close()
            if stop.requested:
                run.flush(meter, step, step - epoch * steps_per_epoch)
                state_r = run.sync(state_r)
                run.save(state_r, step)
                checkpoints.wait()
                logger.info(
                    f"=> stopped by {stop.requested} at step {step} (epoch {step // steps_per_epoch}, "
                    f"batch {step % steps_per_epoch} of {steps_per_epoch}); checkpoint written to "
                    f"{checkpoints.directory}. Run the same command to resume from it.")
                return TrainResult(workdir=workdir, step=step, epoch=step // steps_per_epoch,
                                   best_perf=run.best_perf, last_evaluation=last_eval,
                                   stopped_by=stop.requested)

            epoch_done = step % steps_per_epoch == 0
            due = epoch_done and (step // steps_per_epoch) % max(1, cfg.train.eval_every_epochs) == 0
            state_r = run.sync(state_r)
            if due or step >= total_steps:
                state_r, last_eval = run_validation(state_r, step)
                last_eval_step = step
            run.save(state_r, step)
        if last_eval_step != step and step > 0:
            # Resumed a finished run: report where it stands.
            state_r, last_eval = run_validation(state_r, step)
        if run.is_main:
            final = save_model(os.path.join(workdir, FINAL_MODEL_DIR),
                               unreplicate({"params": state_r.params,
                                            "batch_stats": state_r.batch_stats}), cfg)
            logger.info(f"=> final model: {final}")
    finally:
        stop.restore()
        checkpoints.close()
        scalars.close()
        for loader in (train_loader, valid_loader):
            loader.close()
        logs.close_logger(logger)
    return TrainResult(workdir=workdir, step=step, epoch=step // steps_per_epoch,
                       best_perf=run.best_perf, last_evaluation=last_eval)

