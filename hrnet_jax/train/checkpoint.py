"""Checkpoints of the whole training run with orbax: atomic, the latest few kept.

A checkpoint holds the train state (step, params, batch_stats, optimizer
state) and a small JSON record (epoch, data position, best score so far).
Orbax writes each one into a temporary directory and renames it into place
when complete, so a run killed mid-save (SIGKILL included) leaves the
previous checkpoint intact and the partial one is never restored.

The state is written packed (:func:`pack_tree`): one flat array per dtype
(``state``) and a JSON list of every leaf's path, dtype and shape
(``layout``). HRNet-W32's train state has 3,221 arrays; orbax's work, much
of it Python running beside the training loop while an asynchronous save
is written, grows with their number, and the packed state is a few large
arrays. Checkpoints written leaf by leaf (no ``layout``) are still read.
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
        arrays, layout = pack_tree(jax.device_get(serialization.to_state_dict(state)))
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                    layout=ocp.args.JsonSave(layout),
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
        if not os.path.isdir(os.path.join(self.directory, str(step), "layout")):
            # Written leaf by leaf, before the packed layout.
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                              record=ocp.args.JsonRestore()))
            tree = restored["state"]
        else:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                              layout=ocp.args.JsonRestore(),
                                              record=ocp.args.JsonRestore()))
            tree = unpack_into(target, restored["state"], restored["layout"])
        state = serialization.from_state_dict(template, tree)
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


def _path_keys(path: tuple) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]


def pack_tree(tree: Any) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """A tree of host arrays as one flat array per dtype and its layout.

    Returns:
      ``(arrays, layout)``: ``arrays[dtype]`` holds every leaf of that dtype
      raveled and concatenated in the tree's flattening order; ``layout`` lists
      each leaf in that order as ``{"path": [key, ...], "dtype": str, "shape":
      [int, ...]}`` (JSON-serialisable). :func:`unpack_into` and
      :func:`unpack_nested` invert it exactly.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    groups: dict[str, list[np.ndarray]] = {}
    layout = []
    for path, leaf in leaves:
        array = np.asarray(leaf)
        groups.setdefault(array.dtype.name, []).append(array.ravel())
        layout.append({"path": _path_keys(path), "dtype": array.dtype.name,
                       "shape": list(array.shape)})
    arrays = {dtype: np.concatenate(parts) for dtype, parts in groups.items()}
    return arrays, layout


def _unpacked_leaves(arrays: dict[str, Any], layout: list[dict[str, Any]]) -> list[np.ndarray]:
    arrays = {dtype: np.asarray(flat) for dtype, flat in arrays.items()}
    offsets = dict.fromkeys(arrays, 0)
    leaves = []
    for entry in layout:
        dtype, shape = entry["dtype"], tuple(entry["shape"])
        size = int(np.prod(shape, dtype=np.int64))
        start = offsets[dtype]
        leaves.append(arrays[dtype][start:start + size].reshape(shape))
        offsets[dtype] = start + size
    short = {d: (o, arrays[d].size) for d, o in offsets.items() if o != arrays[d].size}
    if short:
        raise ValueError(f"packed state: the layout accounts for {short} (used, held) values")
    return leaves


def unpack_into(target: Any, arrays: dict[str, Any], layout: list[dict[str, Any]]) -> Any:
    """``target``'s tree with the leaves of a :func:`pack_tree` result, each cast to the
    dtype of ``target``'s leaf (as orbax restores into a target: a step saved as an
    int32 array comes back as the template's Python int's int64).

    Raises:
      ValueError: the layout's paths or shapes differ from ``target``'s (naming
        the first differences), or the arrays do not match the layout.
    """
    targets = jax.tree_util.tree_flatten_with_path(target)[0]
    held = {"/".join(e["path"]): list(e["shape"]) for e in layout}
    wanted = {"/".join(_path_keys(path)): list(np.shape(leaf)) for path, leaf in targets}
    if list(held.items()) != list(wanted.items()):
        problems = ([f"missing {k}" for k in wanted if k not in held]
                    + [f"unexpected {k}" for k in held if k not in wanted]
                    + [f"{k}: holds shape {held[k]}, expected {wanted[k]}"
                       for k in wanted if k in held and held[k] != wanted[k]])
        problems = problems or ["the variables come in another order"]
        raise ValueError(f"the checkpoint's state does not match this train state "
                         f"({len(problems)} differences: {'; '.join(problems[:5])})")
    leaves = [leaf.astype(np.asarray(like).dtype, copy=False)
              for leaf, (_, like) in zip(_unpacked_leaves(arrays, layout), targets, strict=True)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), leaves)


def unpack_nested(arrays: dict[str, Any], layout: list[dict[str, Any]]) -> dict[str, Any]:
    """A :func:`pack_tree` result as nested dicts keyed by the layout's paths (no template
    needed; empty containers of the original tree are not restored)."""
    tree: dict[str, Any] = {}
    for entry, leaf in zip(layout, _unpacked_leaves(arrays, layout), strict=True):
        node = tree
        for key in entry["path"][:-1]:
            node = node.setdefault(key, {})
        node[entry["path"][-1]] = leaf
    return tree
