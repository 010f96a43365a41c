"""Checkpoints of the whole training run with orbax: atomic, the latest few kept.

A checkpoint holds the train state (step, params, batch_stats, optimizer
state) and a small JSON record (epoch, data position, best score so far).
Orbax writes each one into a temporary directory and renames it into place
when complete, so a run killed mid-save (SIGKILL included) leaves the
previous checkpoint intact and the partial one is never restored.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from hrnet_jax.train.state import TrainState

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
        return self.directory + ".unreadable"

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


def restore_variables(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of a checkpoint, without knowing its optimizer.

    ``directory`` is a checkpoint directory of :class:`Checkpoints` (the
    newest step is used unless ``step`` is given) or one step directory in it.
    """
    path = os.path.abspath(os.fspath(directory))
    if os.path.isdir(os.path.join(path, "state")):
        restored = ocp.StandardCheckpointer().restore(os.path.join(path, "state"))
    else:
        with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False)) as m:
            step = m.latest_step() if step is None else step
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {path}")
            restored = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
            restored = restored["state"]
    return {"params": restored["params"], "batch_stats": restored["batch_stats"]}


def load_for_evaluation(path: str | os.PathLike) -> tuple[dict[str, Any], Any, str]:
    """Variables (and the model's configuration, when stored) from any saved form.

    ``path`` may be an exported model (``config.json`` + ``variables.msgpack``),
    a training work directory (its ``model_best``, else the newest checkpoint,
    else ``final_model``), a checkpoint directory, or one step directory in it.

    Returns:
      ``(variables, cfg, source)``: ``cfg`` is the stored
      :class:`~hrnet_jax.config.Config` or None when the checkpoint holds none
      (a checkpoint directory outside a work directory); ``source`` says what
      was loaded.
    """
    from hrnet_jax import config as config_lib
    from hrnet_jax.model_file import CONFIG_FILE, VARIABLES_FILE, load_model

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist or is not a directory")

    def stored_config(workdir: str):
        file = os.path.join(workdir, "config.json")
        if os.path.isfile(file):
            with open(file) as f:
                return config_lib.from_dict(json.load(f))
        return None

    if os.path.isfile(os.path.join(path, VARIABLES_FILE)):
        variables, cfg = load_model(path)
        return variables, cfg, f"exported model {path}"
    best = os.path.join(path, "model_best")
    if os.path.isfile(os.path.join(best, VARIABLES_FILE)):
        variables, cfg = load_model(best)
        return variables, cfg, f"best model {best}"
    checkpoints = os.path.join(path, "checkpoints")
    if os.path.isdir(checkpoints) and _has_steps(checkpoints):
        return restore_variables(checkpoints), stored_config(path), \
            f"newest checkpoint in {checkpoints}"
    final = os.path.join(path, "final_model")
    if os.path.isfile(os.path.join(final, VARIABLES_FILE)):
        variables, cfg = load_model(final)
        return variables, cfg, f"final model {final}"
    if _has_steps(path) or os.path.isdir(os.path.join(path, "state")):
        parent = os.path.dirname(path)
        workdir = os.path.dirname(parent) if os.path.isdir(os.path.join(path, "state")) else parent
        return restore_variables(path), stored_config(workdir), f"checkpoint {path}"
    raise FileNotFoundError(
        f"{path!r} holds no model: expected an exported model ({CONFIG_FILE} and "
        f"{VARIABLES_FILE}), a training work directory (model_best/, checkpoints/ or "
        "final_model/), or a checkpoint directory")


def _has_steps(directory: str) -> bool:
    return any(name.isdigit() and os.path.isdir(os.path.join(directory, name))
               for name in os.listdir(directory))
