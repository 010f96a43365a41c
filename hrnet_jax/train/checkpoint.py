"""Checkpoints of the whole training run with orbax: atomic, the latest few kept.

A checkpoint holds the train state (step, params, batch_stats, optimizer
state) and a small JSON record (epoch, data position, best score so far).
Orbax writes each one into a temporary directory and renames it into place
when complete, so a run killed mid-save (SIGKILL included) leaves the
previous checkpoint intact and the partial one is never restored.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from hrnet_jax.train.state import TrainState
from hrnet_jax.workdir import UNREADABLE_SUFFIX

logger = logging.getLogger(__name__)


class Checkpoints:
    """The latest ``keep`` checkpoints of a run, in ``directory``.

    Args:
      directory: where step directories are written (created if missing).
      keep: how many of the newest checkpoints to keep.
      async_save: write in a background thread while training goes on.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(1, int(keep)),
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: TrainState, record: dict[str, Any]) -> None:
        """Saves a host (unreplicated) train state and a JSON-serialisable record."""
        tree = jax.device_get(serialization.to_state_dict(state))
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                    record=ocp.args.JsonSave(dict(record))),
            force=True,
        )

    def restore(self, template: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """Restores ``step`` into the structure of ``template``; by default the newest
        checkpoint that can be read.

        Without ``step``, a checkpoint that fails to restore (a damaged or
        truncated file) is reported as a warning naming its step and the error,
        and the next older one is tried; :attr:`skipped` lists those passed
        over and are moved to :attr:`set_aside_directory`, so that the run can
        write those steps again. Only when none can be read is the error
        raised: a run never silently starts again from scratch.
        """
        self.skipped: list[tuple[int, str]] = []
        if step is not None:
            return self._restore(template, int(step))
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        for candidate in steps:
            try:
                restored = self._restore(template, candidate)
            except Exception as e:  # orbax/tensorstore raise many kinds for damaged files
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                self.skipped.append((candidate, reason))
                logger.warning("checkpoint %s/%d cannot be restored (%s); trying an older one",
                               self.directory, candidate, reason)
                continue
            self._set_aside([k for k, _ in self.skipped])
            return restored
        listing = "; ".join(f"step {k}: {why}" for k, why in self.skipped)
        raise RuntimeError(f"no checkpoint in {self.directory} can be restored ({listing}); "
                           "move the directory away to start afresh")

    @property
    def set_aside_directory(self) -> str:
        """Where checkpoints that could not be restored are moved (kept for inspection)."""
        return self.directory + UNREADABLE_SUFFIX

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable checkpoints out of the way, so the run can write those steps again."""
        if not steps:
            return
        os.makedirs(self.set_aside_directory, exist_ok=True)
        for step in steps:
            target = os.path.join(self.set_aside_directory, str(step))
            if os.path.exists(target):
                shutil.rmtree(target)
            os.replace(os.path.join(self.directory, str(step)), target)
        self._manager.reload()

    def _restore(self, template: TrainState, step: int) -> tuple[TrainState, dict[str, Any]]:
        target = jax.tree.map(np.asarray, serialization.to_state_dict(template))
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                    record=ocp.args.JsonRestore()),
        )
        state = serialization.from_state_dict(template, restored["state"])
        return state, dict(restored["record"])

    def wait(self) -> None:
        """Blocks until a background save has been written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
