"""A parallel, deterministic, resumable batch loader over a keypoint dataset.

Every batch is a pure function of ``(seed, epoch, batch number, process)``:

* the epoch's order is a permutation seeded by ``(seed, epoch)`` (or dataset
  order without shuffling), the same on every process; it is cut into global
  batches of ``P x B`` records, and process p takes records ``p B .. (p + 1) B``
  of each, so P processes see the batches one process with P times the
  devices would;
* training drops the remainder, so that every batch is full; evaluation visits
  every record once, in dataset order: the last global batch is padded by
  repeating a record, and real samples are marked in ``meta['valid']``;
* a sample's augmentation is seeded by ``(seed, epoch, index)``.

Worker processes (:class:`~hrnet_jax.data.workers.BatchWorkers`) each build
whole batches from a stream of global batch numbers, so the batches do not
depend on how many workers there are, and the iterator's state is just
``{"epoch", "batch"}``. The workers build at most ``prefetch`` batches each
ahead of the consumer; a training loader's workers run on across epochs (and
wait, idle, once they are that far ahead), an evaluation loader's stop at the
end of the epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from hrnet_jax.data.base import JointsDataset
from hrnet_jax.data.registry import build_dataset
from hrnet_jax.data.workers import BatchWorkers

logger = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]

# Far more epochs than any run: the stream of batch numbers the workers walk.
_MAX_EPOCHS = 1_000_000


def default_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count) of this host: given values, else JAX's if JAX is loaded, else (0, 1)."""
    jax = sys.modules.get("jax")
    if process_index is None:
        process_index = jax.process_index() if jax is not None else 0
    if process_count is None:
        process_count = jax.process_count() if jax is not None else 1
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
    return int(process_index), int(process_count)


class BatchPlan:
    """Which dataset indices make up each batch of each epoch, for one process.

    Args:
      num_records: dataset size N.
      batch_size: samples per batch on this process.
      seed: shuffling seed. shuffle: permute each epoch.
      drop_remainder: True for training (full batches only), False for
        evaluation (every record once, last batch padded).
      process_index, process_count: this host's share.
    """

    def __init__(self, num_records: int, batch_size: int, *, seed: int, shuffle: bool,
                 drop_remainder: bool, process_index: int, process_count: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_records = int(num_records)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self.process_index, self.process_count = process_index, process_count
        self.global_batch_size = self.batch_size * process_count
        if drop_remainder:
            self.num_batches = self.num_records // self.global_batch_size
            if self.num_batches == 0:
                raise ValueError(
                    f"{self.num_records} records are fewer than one batch of {batch_size} on each of "
                    f"{process_count} process(es); use a smaller batch size")
        else:
            self.num_batches = math.ceil(self.num_records / self.global_batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """(N,) the epoch's record order, shared by all processes."""
        if not self.shuffle:
            return np.arange(self.num_records)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(epoch)])))
        return rng.permutation(self.num_records)

    def batch(self, epoch: int, number: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (B,), valid (B,) bool)`` of batch ``number`` of ``epoch``."""
        if not 0 <= number < self.num_batches:
            raise IndexError(f"batch {number} out of range: an epoch has {self.num_batches}")
        order = self.order(epoch)
        first = number * self.global_batch_size + self.process_index * self.batch_size
        chosen = order[first:first + self.batch_size]
        valid = np.zeros(self.batch_size, bool)
        valid[:len(chosen)] = True
        if len(chosen) < self.batch_size:
            fill = chosen[-1] if len(chosen) else (order[-1] if len(order) else 0)
            chosen = np.concatenate([chosen, np.full(self.batch_size - len(chosen), fill)])
        return chosen.astype(np.int64), valid


def collate(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]]) -> Batch:
    """Stacks samples into ``(input, target, target_weight, meta)`` with a leading batch axis."""
    inputs = np.stack([s[0] for s in samples])
    targets = np.stack([s[1] for s in samples])
    weights = np.stack([s[2] for s in samples])
    meta: dict[str, np.ndarray] = {}
    for key in samples[0][3]:
        values = [s[3][key] for s in samples]
        if key in ("image", "filename"):
            meta[key] = np.array([str(v) for v in values])
        elif key == "valid":
            meta[key] = np.array(values, dtype=bool)
        elif key in ("index", "imgnum"):
            meta[key] = np.array(values, dtype=np.int64)
        else:
            meta[key] = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    return inputs, targets, weights, meta


class MakeBatch:
    """Global batch number -> batch; picklable, runs in worker processes."""

    def __init__(self, dataset: JointsDataset, plan: BatchPlan) -> None:
        self.dataset = dataset
        self.plan = plan

    def __call__(self, step: int) -> Batch:
        epoch, number = divmod(int(step), self.plan.num_batches)
        indices, valid = self.plan.batch(epoch, number)
        samples = [self.dataset.load(int(i), epoch) for i in indices]
        batch = collate(samples)
        batch[3]["valid"] &= valid
        return batch


class Loader:
    """Iterates over one epoch at a time from a saved position; see the module docstring.

    ``for input, target, target_weight, meta in loader`` yields the rest of the
    current epoch, then the position moves to the next epoch's batch 0.
    ``workers=0`` builds batches in this process; otherwise that many worker
    processes build them ahead, ``prefetch`` batches each at most, which bounds
    the memory they hold (see :class:`~hrnet_jax.data.workers.BatchWorkers`).
    With ``across_epochs`` the workers go on into the next epoch; otherwise
    they stop at the end of each epoch.
    """

    def __init__(self, dataset: JointsDataset, plan: BatchPlan, *, workers: int = 0,
                 prefetch: int = 2, across_epochs: bool = True) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.dataset = dataset
        self.plan = plan
        self.workers = int(workers)
        self.prefetch = int(prefetch)
        self.across_epochs = bool(across_epochs)
        self._make = MakeBatch(dataset, plan)
        self._step = 0  # next global batch number to hand out
        self._stream: Iterator[Batch] | None = None
        self._stream_step = 0  # next global batch number the stream will give
        self.num_bad_images = 0

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        return self.plan.num_batches

    def get_state(self) -> dict[str, int]:
        """The position of the next batch: ``{"epoch": e, "batch": b}`` (JSON-serialisable)."""
        epoch, number = divmod(self._step, self.plan.num_batches)
        return {"epoch": int(epoch), "batch": int(number)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Moves to a position from :meth:`get_state`; the next batch is the one saved."""
        try:
            epoch, number = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"loader state {state!r}: expected {{'epoch': int, 'batch': int}}") from None
        if epoch < 0 or not 0 <= number <= self.plan.num_batches:
            raise ValueError(f"loader state {state!r}: epoch must be >= 0 and batch in "
                             f"[0, {self.plan.num_batches}]")
        self._step = epoch * self.plan.num_batches + number

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (none before iterating or with ``workers=0``)."""
        return self._stream.pids if isinstance(self._stream, BatchWorkers) else []

    def _open_stream(self, start: int) -> Iterator[Batch]:
        self._close_stream()
        batches = self.plan.num_batches
        stop = _MAX_EPOCHS * batches if self.across_epochs else (start // batches + 1) * batches
        if self.workers == 0:
            stream: Iterator[Batch] = (self._make(step) for step in range(start, stop))
        else:
            stream = BatchWorkers(self._make, workers=self.workers, prefetch=self.prefetch,
                                  start=start, stop=stop)
        self._stream, self._stream_step = stream, start
        return stream

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        close = getattr(stream, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> Iterator[Batch]:
        epoch_end = (self._step // self.plan.num_batches + 1) * self.plan.num_batches
        while self._step < epoch_end:
            stream = self._stream
            if stream is None or self._stream_step != self._step:
                stream = self._open_stream(self._step)
            batch = next(stream)
            self._stream_step += 1
            self._step += 1
            self._count_bad(batch)
            yield batch
        if not self.across_epochs:
            self._close_stream()

    def _count_bad(self, batch: Batch) -> None:
        epoch, number = divmod(self._step - 1, self.plan.num_batches)
        _, planned_valid = self.plan.batch(epoch, number)
        bad = int(np.sum(planned_valid & ~batch[3]["valid"]))
        if bad:
            self.num_bad_images += bad
            logger.warning("%d unreadable image(s) skipped in epoch %d batch %d (%d so far)",
                           bad, epoch, number, self.num_bad_images)

    def close(self) -> None:
        """Stops the worker processes (the loader can be iterated again later)."""
        self._close_stream()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._close_stream()
        except Exception:  # interpreter shutdown
            pass


def build_loader(
    cfg: Any,
    split: str,
    *,
    batch_size: int,
    shuffle: bool | None = None,
    workers: int | None = None,
    prefetch: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    skip_bad_images: bool = False,
    seed: int | None = None,
) -> Loader:
    """The loader for ``split`` ``'train'`` (``cfg.dataset.train_set``, augmented,
    remainder dropped) or ``'valid'`` (``cfg.dataset.test_set``, every record once in
    dataset order, padded last batch) of the dataset ``cfg.dataset.name`` (see
    :mod:`hrnet_jax.data.registry`) under ``cfg.dataset.root``.

    Shuffling and augmentation are seeded by ``cfg.seed``.

    Args:
      cfg: a :class:`hrnet_jax.config.Config`.
      split: ``'train'`` or ``'valid'``.
      batch_size: samples per batch on this process.
      shuffle: permute each epoch (default: True for train, False for valid).
      workers: worker processes, 0 building batches in this process (default ``cfg.workers``).
      prefetch: batches each worker prepares ahead of the consumer, at most; the
        workers then hold at most ``workers * prefetch`` finished batches
        (default ``cfg.prefetch``).
      process_index, process_count: this host's share (default: JAX's if loaded, else 0 of 1).
      skip_bad_images: warn about and leave out unreadable images (``meta['valid']``
        False) instead of raising.
      seed: deprecated; set ``cfg.seed`` instead.

    Returns:
      A :class:`Loader` yielding ``(input (B, 3, H, W), target (B, J, h, w),
      target_weight (B, J, 1), meta)`` as NumPy arrays.
    """
    if seed is not None and int(seed) != cfg.seed:
        warnings.warn("build_loader(seed=...) is deprecated: the seed is the config's "
                      f"(override(cfg, 'seed={int(seed)}'))", DeprecationWarning, stacklevel=2)
        cfg = dataclasses.replace(cfg, seed=int(seed))
    dataset = build_dataset(cfg, split, skip_bad_images=skip_bad_images)
    is_train = split == "train"
    index, count = default_process(process_index, process_count)
    plan = BatchPlan(len(dataset), batch_size, seed=cfg.seed,
                     shuffle=is_train if shuffle is None else shuffle, drop_remainder=is_train,
                     process_index=index, process_count=count)
    return Loader(dataset, plan, workers=cfg.workers if workers is None else workers,
                  prefetch=cfg.prefetch if prefetch is None else prefetch,
                  across_epochs=is_train)
