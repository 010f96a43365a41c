"""A training work directory: the names of what it holds, and loading from it to evaluate.

``train(cfg, workdir)`` fills a work directory with

* ``config.json``: the run's :class:`~hrnet_jax.config.Config`;
* ``checkpoints/``: the latest train states (:class:`~hrnet_jax.train.checkpoint.Checkpoints`),
  with ``checkpoints.unreadable/`` for those that could not be restored;
* ``model_best/`` and ``final_model/``: exported models (:mod:`hrnet_jax.model_file`);
* ``train.log``, ``metrics.jsonl``, ``tensorboard/`` and, with ``debug``, ``debug/``.

:func:`load_for_evaluation` reads the variables to evaluate from a work
directory, an exported model or a checkpoint, without the optimizer.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp

from hrnet_jax import config as config_lib
from hrnet_jax.config import Config
from hrnet_jax.model_file import CONFIG_FILE, VARIABLES_FILE, load_model

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_SUFFIX = ".unreadable"
BEST_MODEL_DIR = "model_best"
FINAL_MODEL_DIR = "final_model"
RUN_CONFIG_FILE = CONFIG_FILE
TRAIN_LOG = "train.log"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
DEBUG_DIR = "debug"
RESULTS_FILE = "results.json"


def write_run_config(workdir: str, cfg: Config) -> None:
    """Writes the run's configuration into ``workdir``."""
    with open(os.path.join(workdir, RUN_CONFIG_FILE), "w") as f:
        json.dump(config_lib.to_dict(cfg), f, indent=2, sort_keys=True)


def read_run_config(workdir: str) -> Config | None:
    """The configuration a run wrote into ``workdir``, or None when there is none."""
    file = os.path.join(workdir, RUN_CONFIG_FILE)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return config_lib.from_dict(json.load(f))


def restore_variables(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of a checkpoint, without knowing its optimizer.

    ``directory`` is a checkpoint directory of :class:`Checkpoints` (the
    newest step is used unless ``step`` is given) or one step directory in it.
    """
    from hrnet_jax.train.checkpoint import unpack_nested

    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(os.path.join(path, "state")):
        with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False)) as m:
            step = m.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {path}")
        path = os.path.join(path, str(step))
    restored = ocp.StandardCheckpointer().restore(os.path.join(path, "state"))
    if os.path.isdir(os.path.join(path, "layout")):  # packed (see hrnet_jax.train.checkpoint)
        layout = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
            os.path.join(path, "layout"))
        restored = unpack_nested(restored, layout)
    return {"params": restored["params"], "batch_stats": restored["batch_stats"]}


def load_for_evaluation(path: str | os.PathLike, cfg: Config | None = None
                        ) -> tuple[dict[str, Any], Any, str]:
    """Variables (and the model's configuration, when stored) from any saved form.

    ``path`` may be an exported model (``config.json`` + ``variables.msgpack``),
    a training work directory (its ``model_best``, else the newest checkpoint,
    else ``final_model``), a checkpoint directory, one step directory in it,
    or a reference PyTorch ``.pth`` file (the reference's ``TEST.MODEL_FILE``;
    needs torch and ``cfg``, the network it holds).

    Returns:
      ``(variables, cfg, source)``: ``cfg`` is the stored
      :class:`~hrnet_jax.config.Config` or None when the checkpoint holds none
      (a checkpoint directory outside a work directory, a ``.pth`` file);
      ``source`` says what was loaded.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path) and path.endswith((".pth", ".pt")):
        if cfg is None:
            raise ValueError(f"{path!r} is a reference PyTorch checkpoint: its network's "
                             "configuration is needed to convert it")
        from hrnet_jax.convert import read_torch_checkpoint, torch_state_dict_to_variables

        state_dict = read_torch_checkpoint(path)
        try:
            variables = torch_state_dict_to_variables(state_dict, cfg)
        except ValueError as e:
            raise ValueError(f"{path!r} does not hold the network of this config:\n{e}") from None
        return variables, None, f"reference checkpoint {path}"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist or is not a directory")

    if os.path.isfile(os.path.join(path, VARIABLES_FILE)):
        variables, cfg = load_model(path)
        return variables, cfg, f"exported model {path}"
    best = os.path.join(path, BEST_MODEL_DIR)
    if os.path.isfile(os.path.join(best, VARIABLES_FILE)):
        variables, cfg = load_model(best)
        return variables, cfg, f"best model {best}"
    checkpoints = os.path.join(path, CHECKPOINT_DIR)
    if os.path.isdir(checkpoints) and _has_steps(checkpoints):
        return restore_variables(checkpoints), read_run_config(path), \
            f"newest checkpoint in {checkpoints}"
    final = os.path.join(path, FINAL_MODEL_DIR)
    if os.path.isfile(os.path.join(final, VARIABLES_FILE)):
        variables, cfg = load_model(final)
        return variables, cfg, f"final model {final}"
    if _has_steps(path) or os.path.isdir(os.path.join(path, "state")):
        parent = os.path.dirname(path)
        workdir = os.path.dirname(parent) if os.path.isdir(os.path.join(path, "state")) else parent
        return restore_variables(path), read_run_config(workdir), f"checkpoint {path}"
    raise FileNotFoundError(
        f"{path!r} holds no model: expected an exported model ({CONFIG_FILE} and "
        f"{VARIABLES_FILE}), a training work directory ({BEST_MODEL_DIR}/, {CHECKPOINT_DIR}/ "
        f"or {FINAL_MODEL_DIR}/), or a checkpoint directory")


def _has_steps(directory: str) -> bool:
    return any(name.isdigit() and os.path.isdir(os.path.join(directory, name))
               for name in os.listdir(directory))
