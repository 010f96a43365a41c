"""The training run: epochs of pmap'd steps, validation, checkpoints and resume.

:func:`train` is the whole of ``scripts/train.py``: it prepares the data,
builds or restores the train state, and alternates training epochs with
flip-test validation, as the reference's ``tools/train.py`` does. Rerunning
it on the same work directory resumes from the newest complete checkpoint
with the same step, optimizer state, learning rate and data order.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
import numpy as np

from hrnet_jax import config as config_lib
from hrnet_jax import data as data_lib
from hrnet_jax import logs
from hrnet_jax.compilation import announce_compilation, describe_step
from hrnet_jax.config import Config
from hrnet_jax.data.registry import prepare_dataset
from hrnet_jax.evaluation import Evaluation, evaluate, make_eval_step
from hrnet_jax.metrics import format_table
from hrnet_jax.model_file import save_model
from hrnet_jax.parallel import prefetch_to_devices, replicate, shard_to_devices, unreplicate
from hrnet_jax.train.checkpoint import Checkpoints
from hrnet_jax.train.preemption import StopRequest
from hrnet_jax.train.state import (
    TrainState,
    create_train_state,
    init_variables,
    lr_boundaries,
)
from hrnet_jax.train.steps import make_train_step, sync_batch_stats
from hrnet_jax.workdir import (
    BEST_MODEL_DIR,
    CHECKPOINT_DIR,
    DEBUG_DIR,
    FINAL_MODEL_DIR,
    write_run_config,
)

__all__ = ["train", "TrainResult", "TrainingDiverged"]


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


def _place_train_batch(batch: Any) -> Any:
    """The batch's (input, target, target_weight), split over and placed on the local devices."""
    images, target, target_weight, _ = batch
    return shard_to_devices((images, target, target_weight))


def _load_pretrained(cfg: Config, variables: dict, logger) -> dict:
    from hrnet_jax.convert import load_pretrained_backbone, read_torch_checkpoint

    path = cfg.model.pretrained
    if not os.path.isfile(path):
        # The reference stops here too rather than train from scratch unasked.
        raise FileNotFoundError(
            f"model.pretrained {path!r} does not exist: put the reference's ImageNet HRNet "
            "weights there (see README, Training), or start from the random initialisation "
            "with --set model.pretrained=")

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
    """Everything one :func:`train` call sets up once: loaders, steps, checkpoints, logs,
    and the best score so far."""

    def __init__(self, cfg: Config, workdir: str, logger: Any, *, max_steps: int | None,
                 show_progress: bool) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.logger = logger
        self.is_main = jax.process_index() == 0
        self.show_progress = show_progress and self.is_main
        self.num_devices = jax.local_device_count()
        self.train_batch = cfg.train.batch_size_per_device * self.num_devices
        self.best_perf: float | None = None
        self.best_step: int | None = None
        self.compiled = False  # the first train step (compiling) is left out of timing
        try:
            self._open(max_steps)
        except BaseException:
            self.close()
            raise

    def _open(self, max_steps: int | None) -> None:
        """Builds the loaders, the steps, the checkpoint manager and the scalar writers."""
        cfg, logger, workdir = self.cfg, self.logger, self.workdir
        valid_batch = cfg.test.batch_size_per_device * self.num_devices
        self.train_loader = data_lib.build_loader(cfg, "train", batch_size=self.train_batch,
                                                  shuffle=cfg.train.shuffle)
        self.valid_loader = data_lib.build_loader(cfg, "valid", batch_size=valid_batch)
        self.steps_per_epoch = len(self.train_loader)  # at least 1: the loader checks
        total = cfg.train.end_epoch * self.steps_per_epoch
        self.total_steps = total if max_steps is None else min(total, int(max_steps))
        self.lr_boundaries = replicate(lr_boundaries(cfg, self.steps_per_epoch))
        self.train_step = announce_compilation(
            make_train_step(cfg, return_output=cfg.debug),
            describe_step("train step", cfg, self.train_batch), logger.info)
        self.eval_step = announce_compilation(
            make_eval_step(cfg), describe_step("eval step", cfg, valid_batch), logger.info)
        self.checkpoints = Checkpoints(os.path.join(workdir, CHECKPOINT_DIR),
                                       keep=cfg.train.keep_checkpoints)
        self.scalars = logs.Scalars(workdir, enabled=self.is_main, logger=logger)

    def close(self) -> None:
        """Closes what :meth:`_open` opened, as far as it got."""
        for part in ("checkpoints", "scalars", "train_loader", "valid_loader"):
            if hasattr(self, part):
                getattr(self, part).close()

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
        directory = os.path.join(self.workdir, DEBUG_DIR)
        os.makedirs(directory, exist_ok=True)
        vis.save_debug_images(os.path.join(directory, name), images, meta, target,
                              np.asarray(preds) * stride, output)

    def save(self, state_r: Any, step: int) -> bool:
        """Checkpoints ``step`` once (statistics synchronised by the caller); True if it did."""
        if self.checkpoints.latest_step() == step:
            return False
        self.checkpoints.save(step, unreplicate(state_r), self.record(step))
        return True

    def result(self, step: int, evaluation: Evaluation | None,
               stopped_by: str | None = None) -> TrainResult:
        return TrainResult(workdir=self.workdir, step=step, epoch=step // self.steps_per_epoch,
                           best_perf=self.best_perf, last_evaluation=evaluation,
                           stopped_by=stopped_by)


def _initial_state(run: _Run) -> TrainState:
    """The newest restorable checkpoint's state, else a fresh one (its backbone from
    ``model.pretrained`` when set)."""
    cfg, logger, checkpoints = run.cfg, run.logger, run.checkpoints
    variables = init_variables(cfg, jax.random.key(cfg.seed))
    if checkpoints.latest_step() is None:
        if cfg.model.pretrained:
            variables = _load_pretrained(cfg, variables, logger)
        if run.is_main:
            write_run_config(run.workdir, cfg)
        processes = (f" in each of {jax.process_count()} processes (global batch "
                     f"{run.train_batch * jax.process_count()})"
                     if jax.process_count() > 1 else "")
        logger.info(f"=> training {cfg.model.name} on {cfg.dataset.name} "
                    f"({run.train_loader.dataset_size} samples, {run.steps_per_epoch} steps "
                    f"per epoch, batch {run.train_batch} on {run.num_devices} device(s)"
                    f"{processes}) into {run.workdir}")
        return create_train_state(cfg, variables, run.steps_per_epoch)

    state, record = checkpoints.restore(create_train_state(cfg, variables,
                                                           run.steps_per_epoch))
    for skipped, reason in checkpoints.skipped:
        logger.info(f"=> WARNING: the checkpoint of step {skipped} in {checkpoints.directory} "
                    f"cannot be restored ({reason}); moved to "
                    f"{checkpoints.set_aside_directory}, resuming from an older one")
    if record.get("steps_per_epoch") != run.steps_per_epoch:
        raise ValueError(
            f"{checkpoints.directory}: the run being resumed had "
            f"{record.get('steps_per_epoch')} steps per epoch, this one has "
            f"{run.steps_per_epoch} (batch size, device count or dataset changed); resume "
            "with the same settings or use a new --workdir")
    run.best_perf, run.best_step = record.get("best_perf"), record.get("best_step")
    logger.info(f"=> resuming from {checkpoints.directory} at step {int(state.step)} "
                f"(epoch {record['epoch']})")
    return state


def _train_epoch(run: _Run, state_r: Any, step: int, stop: StopRequest
                 ) -> tuple[Any, int, _EpochMeter]:
    """Trains from ``step`` to the end of its epoch, ``run.total_steps`` or a stop
    request, whichever comes first; returns the state, the step reached and the meter."""
    cfg, per_epoch = run.cfg, run.steps_per_epoch
    epoch = step // per_epoch
    run.train_loader.set_state({"epoch": epoch, "batch": step % per_epoch})
    meter = _EpochMeter(epoch, per_epoch, run.train_batch)
    bar = logs.progress(per_epoch, step % per_epoch, f"epoch {epoch}") \
        if run.show_progress else None
    every = cfg.train.checkpoint_every_steps
    batches = prefetch_to_devices(run.train_loader, _place_train_batch)
    try:
        t_fetch = time.perf_counter()
        for arrays, batch in batches:
            data_seconds = time.perf_counter() - t_fetch
            state_r, metrics = run.train_step(state_r, *arrays, run.lr_boundaries)
            meter.add(metrics, data_seconds)
            if not run.compiled:
                meter.leave_out_of_timing()
                run.compiled = True
            step += 1
            index = step - epoch * per_epoch
            if bar is not None:
                bar.update(1)
            if index % cfg.print_freq == 0 or index == per_epoch or step == run.total_steps:
                run.flush(meter, step, index)
                if cfg.debug and run.is_main:
                    run.save_debug_images(f"train_{epoch}_{index}", batch, metrics)
            if every and step % every == 0:
                run.flush(meter, step, index)
                state_r = run.sync(state_r)
                run.save(state_r, step)
            if step >= run.total_steps or stop.requested:
                break
            t_fetch = time.perf_counter()
    finally:
        batches.close()  # the background thread stops before the loader moves on
        if bar is not None:
            bar.close()
    run.flush(meter, step, step - epoch * per_epoch)
    return state_r, step, meter


def _validate(run: _Run, state_r: Any, step: int) -> Evaluation:
    """Validates ``state_r`` (statistics already synchronised) and keeps the best model."""
    cfg, logger = run.cfg, run.logger
    variables_r = {"params": state_r.params, "batch_stats": state_r.batch_stats}
    run.valid_loader.set_state({"epoch": 0, "batch": 0})
    result = evaluate(run.eval_step, variables_r, run.valid_loader,
                      output_dir=run.workdir if run.is_main else None,
                      show_progress=run.show_progress, total_batches=len(run.valid_loader))
    logger.info(f"Test: step {step}\tLoss {result.loss:.5f}\tAccuracy {result.accuracy:.3f}")
    if result.table is not None:
        logger.info(format_table(result.table, cfg.model.name))
    run.scalars.write(step, {"valid_loss": result.loss, "valid_acc": result.accuracy,
                             **{f"valid/{k}": v for k, v in result.scalars().items()}})
    perf = result.score
    if perf is not None and (run.best_perf is None or perf > run.best_perf):
        run.best_perf, run.best_step = perf, step
        best = os.path.join(run.workdir, BEST_MODEL_DIR)
        if run.is_main:
            save_model(best, unreplicate(variables_r), cfg)
        logger.info(f"=> best so far: {run.valid_loader.dataset.headline_metric} {perf:.3f} "
                    f"at step {step}, saved to {best}")
    return result


def _validation_due(run: _Run, step: int) -> bool:
    epochs, within = divmod(step, run.steps_per_epoch)
    return (within == 0 and epochs % max(1, run.cfg.train.eval_every_epochs) == 0) \
        or step >= run.total_steps


def _run_epochs(run: _Run, state_r: Any, stop: StopRequest) -> TrainResult:
    step = int(unreplicate(state_r.step))
    evaluation, evaluated_at = None, -1
    while step < run.total_steps:
        started, compiled = time.perf_counter(), run.compiled
        state_r, reached, meter = _train_epoch(run, state_r, step, stop)
        state_r = run.sync(state_r)
        trained = time.perf_counter()
        epoch, steps, step = step // run.steps_per_epoch, reached - step, reached
        if stop.requested:
            run.save(state_r, step)
            run.checkpoints.wait()
            run.logger.info(
                f"=> stopped by {stop.requested} at step {step} (epoch "
                f"{step // run.steps_per_epoch}, batch {step % run.steps_per_epoch} of "
                f"{run.steps_per_epoch}); checkpoint written to {run.checkpoints.directory}. "
                "Run the same command to resume from it.")
            return run.result(step, evaluation, stopped_by=stop.requested)
        validation_s = None
        if _validation_due(run, step):
            evaluation, evaluated_at = _validate(run, state_r, step), step
            validation_s = time.perf_counter() - trained
        saving = time.perf_counter()
        saved = run.save(state_r, step)
        run.logger.info(logs.epoch_line(
            epoch, steps=steps, train_s=trained - started, data_s=meter.data_time.total,
            validation_s=validation_s, checkpoint_s=time.perf_counter() - saving if saved else None,
            compiled=not compiled, workers=run.train_loader.workers))
    if evaluated_at != step and step > 0:
        # Resumed a finished run: report where it stands.
        evaluation = _validate(run, state_r, step)
    if run.is_main:
        final = save_model(os.path.join(run.workdir, FINAL_MODEL_DIR),
                           unreplicate({"params": state_r.params,
                                        "batch_stats": state_r.batch_stats}), run.cfg)
        run.logger.info(f"=> final model: {final}")
    return run.result(step, evaluation)


def train(cfg: Config, workdir: str | os.PathLike, *, max_steps: int | None = None,
          pretrained: str | None = None, show_progress: bool = True) -> TrainResult:
    """Trains (or resumes training) ``cfg`` in ``workdir``.

    Args:
      cfg: the experiment. Its dataset (``dataset.name``, see
        :mod:`hrnet_jax.data.registry`) must exist, or is generated once (the
        synthetic sets).
      workdir: holds ``checkpoints/``, ``model_best/``, ``final_model/``,
        ``train.log``, ``metrics.jsonl`` and TensorBoard files (see
        :mod:`hrnet_jax.workdir`).
      max_steps: stop after this many steps in all (counting those of the run
        being resumed); None trains to ``train.end_epoch``.
      pretrained: a reference ImageNet HRNet ``.pth`` to start the backbone
        from (``model.pretrained_layers``); replaces ``model.pretrained``, which
        is used otherwise. Either is ignored when resuming.
      show_progress: show progress bars on a terminal.

    Returns:
      A :class:`TrainResult`.

    Raises:
      TrainingDiverged: the loss became NaN or infinite.
      FileNotFoundError: the dataset is missing (the message says where it goes).
    """
    workdir = os.path.abspath(os.fspath(workdir))
    if pretrained is not None:
        cfg = config_lib.override(cfg, {"model.pretrained": os.fspath(pretrained)})
    main_process = jax.process_index() == 0
    logger = logs.get_logger(workdir if main_process else None, quiet=not main_process)
    stop = StopRequest()
    run = None
    try:
        prepare_dataset(cfg)
        run = _Run(cfg, workdir, logger, max_steps=max_steps, show_progress=show_progress)
        state_r = replicate(_initial_state(run))
        # Processes would stop at different steps and wait for each other forever: a
        # multi-process run keeps the default signal behaviour (see README).
        if jax.process_count() == 1:
            stop.install()
        return _run_epochs(run, state_r, stop)
    finally:
        stop.restore()
        if run is not None:
            run.close()
        logs.close_logger(logger)
