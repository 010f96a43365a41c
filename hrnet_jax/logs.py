"""What a run tells its user: reference-style log lines, a progress bar, scalars.

Scalars go to ``metrics.jsonl`` in the work directory (one JSON object a
line, always) and to TensorBoard event files when tensorboardX is installed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import tqdm

from hrnet_jax.workdir import METRICS_FILE, TENSORBOARD_DIR, TRAIN_LOG

LOGGER_NAME = "hrnet_jax"


def get_logger(workdir: str | os.PathLike | None = None, *, quiet: bool = False) -> logging.Logger:
    """A logger printing to stdout (through tqdm, so a progress bar stays intact) and
    appending to ``workdir/train.log``; ``quiet`` (the processes other than the
    first of a multi-process run) keeps only warnings and errors."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(workdir, TRAIN_LOG))
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(file_handler)
    return logger


def close_logger(logger: logging.Logger) -> None:
    """Undoes :func:`get_logger`: closes its handlers (``train.log`` included) and lets
    the records reach the application's own logging configuration again."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.tqdm.write(self.format(record), file=sys.stdout)


def progress(total: int, initial: int = 0, desc: str = "") -> tqdm.tqdm:
    """A progress bar on stderr, shown only on a terminal."""
    return tqdm.tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                     disable=None, file=sys.stderr)


class Average:
    """A running value and its weighted mean, as the reference's AverageMeter."""

    def __init__(self) -> None:
        self.value = 0.0
        self.total = 0.0
        self.weight = 0.0

    def update(self, value: float, weight: float = 1.0) -> None:
        self.value = float(value)
        self.total += float(value) * weight
        self.weight += weight

    @property
    def mean(self) -> float:
        return self.total / self.weight if self.weight else 0.0


def train_line(epoch: int, index: int, steps_per_epoch: int, *, step_time: Average,
               data_time: Average, loss: Average, accuracy: Average, batch_size: int) -> str:
    """``Epoch: [e][i/n]  Time  Speed  Data  Loss  Accuracy``, the reference's columns."""
    if step_time.weight:
        speed = batch_size / step_time.value if step_time.value > 0 else float("nan")
        timing = (f"Time {step_time.value:.3f}s ({step_time.mean:.3f}s)\t"
                  f"Speed {speed:.1f} samples/s\t")
    else:  # only the first step so far, whose time was its compilation's
        timing = "Time (compiling)\tSpeed -\t"
    return (
        f"Epoch: [{epoch}][{index}/{steps_per_epoch}]\t"
        f"{timing}"
        f"Data {data_time.value:.3f}s ({data_time.mean:.3f}s)\t"
        f"Loss {loss.value:.5f} ({loss.mean:.5f})\t"
        f"Accuracy {accuracy.value:.3f} ({accuracy.mean:.3f})"
    )


# The share of an epoch's training time spent waiting for batches above which the
# epoch line says that data loading bounds the step rate.
DATA_BOUND_SHARE = 0.2


def epoch_line(epoch: int, *, steps: int, train_s: float, data_s: float,
               validation_s: float | None, checkpoint_s: float | None,
               compiled: bool = False, workers: int | None = None) -> str:
    """Where an epoch's time went: training (per step, and the wait for data), validation
    and the checkpoint's synchronous part (the rest is written in the background).

    ``validation_s`` / ``checkpoint_s`` are None when the epoch had none;
    ``compiled``: the train step compiled during this epoch, and its time is in ``train_s``.
    When the wait for data is :data:`DATA_BOUND_SHARE` of ``train_s`` or more, the
    line says that data loading bounds the step rate, and what would help given
    ``workers`` (the data worker processes; 0: batches built in the training process).
    """
    per_step = train_s / steps if steps else float("nan")
    waiting = data_s / steps if steps else float("nan")
    first = (f"=> epoch {epoch}: {steps} steps in {train_s:.1f} s ({per_step:.3f} s a step, "
             f"{waiting:.3f} s of it waiting for data"
             + ("; compiling the step included" if compiled else "") + ")")
    if steps and train_s > 0 and data_s >= DATA_BOUND_SHARE * train_s:
        first += (f"; data loading bounds the step rate: the loop waited for batches "
                  f"{100 * data_s / train_s:.0f}% of the time")
        if workers == 0:
            first += " (batches are built in the training process: --workers N would help)"
        elif workers is not None:
            first += f" (more --workers than {workers} would help while cores are free)"
    parts = [first]
    if validation_s is not None:
        parts.append(f"validation {validation_s:.1f} s")
    if checkpoint_s is not None:
        parts.append(f"checkpoint {checkpoint_s:.1f} s")
    return ", ".join(parts)


class Scalars:
    """Writes named scalars to ``metrics.jsonl`` and, if available, TensorBoard."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True,
                 logger: logging.Logger | None = None) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(os.path.join(workdir, METRICS_FILE), "a")
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            if logger is not None:
                logger.info("tensorboardX is not installed: scalars go to metrics.jsonl only "
                            "(pip install tensorboardX for TensorBoard)")
        else:
            self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()
                 if v is not None and math.isfinite(float(v))}
        self._file.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
